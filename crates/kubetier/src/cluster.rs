//! The API server as the admin sees it, and what tests make in it: namespaces, service accounts,
//! TokenRequest tokens and kubeconfigs; `kubectl` and `helm` with a given kubeconfig.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use crate::env::Env;

/// A name no other test of this run uses: `<prefix>-<process id>-<counter>`, at most 63
/// characters as Kubernetes names (and namespace names) must be.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    assert!(
        name.len() <= 63,
        "name {name:?} is longer than 63 characters"
    );
    name
}

/// What a TokenRequest asks for.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    audiences: Vec<String>,
    expiration_seconds: i64,
    bound_pod: Option<(String, String)>,
}

impl TokenOptions {
    /// A token for the API server itself (the issuer is its audience), valid for an hour.
    pub fn api() -> Self {
        Self {
            audiences: Vec::new(),
            expiration_seconds: 3600,
            bound_pod: None,
        }
    }

    /// A token for `audience` (`istio-ca` is what node proxies and capture agents present).
    pub fn audience(audience: &str) -> Self {
        Self {
            audiences: vec![audience.to_owned()],
            ..Self::api()
        }
    }

    /// Valid for `seconds` (the API server's minimum is 600).
    pub fn expiration(mut self, seconds: i64) -> Self {
        self.expiration_seconds = seconds;
        self
    }

    /// Bound to `pod`: invalid once that pod (same name and uid) is gone.
    pub fn bound_to(mut self, pod: &Pod) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.bound_pod = Some((name, uid));
        self
    }

    pub(crate) fn request(&self) -> anyhow::Result<TokenRequest> {
        let mut spec = json!({
            "audiences": self.audiences,
            "expirationSeconds": self.expiration_seconds,
        });
        if let Some((name, uid)) = &self.bound_pod {
            spec["boundObjectRef"] =
                json!({"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid});
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": spec,
        }))?)
    }
}

/// What a `kubectl` or `helm` run printed, and how it ended.
#[derive(Debug)]
pub struct ToolRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ToolRun {
    /// Its standard output if it succeeded; otherwise an error with what it printed.
    pub fn ok(self) -> anyhow::Result<String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            bail!(
                "exited with {}\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout,
                self.stderr
            )
        }
    }
}

/// One API server, reached as its admin (`system:masters`).
#[derive(Clone)]
pub struct Cluster {
    env: Env,
    client: kube::Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("env", &self.env.file())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The tier's shared cluster, as scripts/test-kube started it. Panics (failing the test) when
    /// the tier's environment is absent or the API server cannot be reached.
    pub async fn shared() -> Self {
        let env = Env::from_environment();
        match Self::connect(env).await {
            Ok(cluster) => cluster,
            Err(e) => panic!("the Kubernetes tier's API server: {e:#}"),
        }
    }

    /// Connects as the admin of the cluster `env` describes and checks it answers.
    pub async fn connect(env: Env) -> anyhow::Result<Self> {
        let client = client_for(&env.path("AMBIT_KUBE_ADMIN_KUBECONFIG")?).await?;
        let cluster = Self { env, client };
        let version = cluster
            .client
            .apiserver_version()
            .await
            .with_context(|| format!("no answer from {}", cluster.server()))?;
        let want = cluster.env.get("AMBIT_KUBE_VERSION")?;
        if version.git_version != want {
            bail!(
                "{} is {}, the tier built {want}",
                cluster.server(),
                version.git_version
            );
        }
        Ok(cluster)
    }

    pub fn env(&self) -> &Env {
        &self.env
    }

    /// The admin's client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        self.env.optional("AMBIT_KUBE_SERVER").unwrap_or("?")
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.path("AMBIT_KUBE_ADMIN_KUBECONFIG")
    }

    /// The cluster CA's certificate (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.path("AMBIT_KUBE_CA")
    }

    /// The repository checkout (charts are under `deploy/`).
    pub fn repo(&self) -> PathBuf {
        self.path("AMBIT_KUBE_REPO")
    }

    /// The `ambit` binary scripts/test-kube built.
    pub fn ambit_exe(&self) -> PathBuf {
        self.path("AMBIT_KUBE_AMBIT")
    }

    /// The `ambit-node` binary scripts/test-kube built.
    pub fn ambit_node_exe(&self) -> PathBuf {
        self.path("AMBIT_KUBE_AMBIT_NODE")
    }

    /// A path the environment must have; panics naming the key (a broken tier setup).
    pub fn path(&self, key: &str) -> PathBuf {
        match self.env.path(key) {
            Ok(path) => path,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// A folder of this cluster's for files tests write (kubeconfigs, certificates).
    pub fn scratch(&self) -> anyhow::Result<PathBuf> {
        let dir = self.env.path("AMBIT_KUBE_WORK")?.join("scratch");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        Ok(dir)
    }

    // === objects ===============================================================================

    /// Creates namespace `name` with `labels`, and what the controllers would add to it: the
    /// `default` ServiceAccount and ConfigMap `kube-root-ca.crt`.
    pub async fn namespace(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Namespace> {
        let labels: serde_json::Map<_, _> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
        }))?;
        let namespace = Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("cannot create namespace {name}"))?;
        self.service_account(name, "default").await?;
        let ca = std::fs::read_to_string(self.ca_file())?;
        let root: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "kube-root-ca.crt", "namespace": name},
            "data": {"ca.crt": ca},
        }))?;
        Api::<ConfigMap>::namespaced(self.client(), name)
            .create(&PostParams::default(), &root)
            .await
            .with_context(|| format!("cannot create ConfigMap kube-root-ca.crt in {name}"))?;
        Ok(namespace)
    }

    /// Creates ServiceAccount `namespace/name`.
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<ServiceAccount> {
        let account: ServiceAccount = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
        }))?;
        Api::<ServiceAccount>::namespaced(self.client(), namespace)
            .create(&PostParams::default(), &account)
            .await
            .with_context(|| format!("cannot create ServiceAccount {namespace}/{name}"))
    }

    /// A token of ServiceAccount `namespace/name` from the TokenRequest API, asked as the admin.
    pub async fn token(
        &self,
        namespace: &str,
        name: &str,
        options: &TokenOptions,
    ) -> anyhow::Result<String> {
        request_token(&self.client(), namespace, name, options).await
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name` with a token for the API
    /// server (as a pod's in-cluster configuration does).
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self.token(namespace, name, &TokenOptions::api()).await?;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let file = self
            .scratch()?
            .join(format!("{}.kubeconfig", unique_name(&format!("sa-{name}"))));
        self.write_kubeconfig(&file, &user, json!({"token": token}), namespace)?;
        Ok(file)
    }

    /// Writes a kubeconfig for this cluster with `credentials` (a kubeconfig `user` map).
    pub(crate) fn write_kubeconfig(
        &self,
        file: &Path,
        user: &str,
        credentials: serde_json::Value,
        namespace: &str,
    ) -> anyhow::Result<()> {
        // JSON is YAML: kubectl, helm and kube-rs read it as a kubeconfig.
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube", "cluster": {
                "server": self.server(),
                "certificate-authority": self.ca_file(),
            }}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": user, "context": {"cluster": "kube", "user": user, "namespace": namespace}}],
            "current-context": user,
        });
        std::fs::write(file, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("cannot write {}", file.display()))
    }

    /// A client that authenticates as `kubeconfig` says.
    pub async fn client_for(&self, kubeconfig: &Path) -> anyhow::Result<kube::Client> {
        client_for(kubeconfig).await
    }

    // === tools =================================================================================

    /// Runs `kubectl --kubeconfig <kubeconfig> args…`.
    pub async fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<ToolRun> {
        let mut command = tokio::process::Command::new(self.path("AMBIT_KUBE_KUBECTL"));
        command.arg("--kubeconfig").arg(kubeconfig).args(args);
        run_tool(command, "kubectl", args).await
    }

    /// Runs `kubectl` as the admin and returns what it printed; an error if it failed.
    pub async fn admin_kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl(&self.admin_kubeconfig(), args)
            .await?
            .ok()
            .with_context(|| format!("kubectl {}", args.join(" ")))
    }

    /// Runs `helm --kubeconfig <kubeconfig> args…` (Helm 4), with its caches in this cluster's
    /// folder so runs never share state through `~/.cache/helm`.
    pub async fn helm(&self, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<ToolRun> {
        let home = self.scratch()?.join("helm");
        let mut command = tokio::process::Command::new(self.path("AMBIT_KUBE_HELM"));
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        run_tool(command, "helm", args).await
    }

    /// Runs `helm` as the admin and returns what it printed; an error if it failed.
    pub async fn admin_helm(&self, args: &[&str]) -> anyhow::Result<String> {
        self.helm(&self.admin_kubeconfig(), args)
            .await?
            .ok()
            .with_context(|| format!("helm {}", args.join(" ")))
    }

    /// Applies manifest files as the admin with server-side apply (CRDs larger than the
    /// client-side annotation allows apply too), then waits until every CRD among them is
    /// established.
    pub async fn apply_files(&self, files: &[&Path]) -> anyhow::Result<String> {
        let mut args = vec!["apply", "--server-side", "--field-manager=kubetier"];
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        for name in &names {
            args.extend(["-f", name.as_str()]);
        }
        let applied = self.admin_kubectl(&args).await?;
        let crds: Vec<&str> = applied
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|o| o.starts_with("customresourcedefinition."))
            .collect();
        if !crds.is_empty() {
            let mut wait = vec!["wait", "--for=condition=established", "--timeout=60s"];
            wait.extend(crds);
            self.admin_kubectl(&wait).await?;
        }
        Ok(applied)
    }

    /// Every object in the cluster, one `group/kind namespace/name` line each, except the kinds
    /// the API server itself keeps changing (events, leases): a before/after pair of these shows
    /// what an install or uninstall left behind.
    pub async fn objects(&self) -> anyhow::Result<std::collections::BTreeSet<String>> {
        let kinds = self
            .admin_kubectl(&["api-resources", "--verbs=list", "-o", "name"])
            .await?;
        let kinds: Vec<&str> = kinds
            .lines()
            .filter(|k| !k.starts_with("events") && !k.starts_with("leases."))
            .collect();
        let listed = self
            .admin_kubectl(&[
                "get",
                &kinds.join(","),
                "--all-namespaces",
                "--ignore-not-found",
                "-o",
                "jsonpath={range .items[*]}{.apiVersion} {.kind} {.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}",
            ])
            .await?;
        Ok(listed
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                // `apps/v1 DaemonSet ns/name` -> `apps/DaemonSet ns/name` (served versions vary).
                let mut words = l.splitn(3, ' ');
                let (version, kind, rest) = (
                    words.next().unwrap_or_default(),
                    words.next().unwrap_or_default(),
                    words.next().unwrap_or_default(),
                );
                let group = version.rsplit_once('/').map_or("core", |(g, _)| g);
                format!("{group}/{kind} {rest}")
            })
            .collect())
    }

    // === the API server ========================================================================

    /// Stops the API server (SIGTERM, as a rolling restart does) and starts it again with the
    /// same command line; returns once it is ready. etcd keeps running, so nothing is lost.
    pub async fn restart_api_server(&self) -> anyhow::Result<()> {
        let pid_file = self.env.path("AMBIT_KUBE_APISERVER_PID")?;
        let args_file = self.env.path("AMBIT_KUBE_APISERVER_ARGS")?;
        let log_file = self.env.path("AMBIT_KUBE_APISERVER_LOG")?;
        let pid: i32 = std::fs::read_to_string(&pid_file)?
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", pid_file.display()))?;
        crate::pid::terminate(pid, Duration::from_secs(20)).await;

        let args = std::fs::read_to_string(&args_file)?;
        let mut args = args.lines();
        let program = args.next().context("empty API server command line")?;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_file)?;
        let child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        std::fs::write(&pid_file, format!("{}\n", child.id()))?;
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// Waits until `/readyz` says ok.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let request = http_get("/readyz")?;
            match self.client.request_text(request).await {
                Ok(body) if body == "ok" => return Ok(()),
                Ok(body) if Instant::now() >= deadline => bail!("/readyz says {body:?}"),
                Err(e) if Instant::now() >= deadline => {
                    bail!("{} not ready after {timeout:?}: {e}", self.server())
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

// === helpers ===================================================================================

pub(crate) async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read kubeconfig {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
    Ok(kube::Client::try_from(config)?)
}

pub(crate) async fn request_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    options: &TokenOptions,
) -> anyhow::Result<String> {
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &options.request()?)
        .await
        .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
    let token = response
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .with_context(|| format!("TokenRequest for {namespace}/{name} returned no token"))?;
    Ok(token)
}

fn http_get(path: &str) -> anyhow::Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}

async fn run_tool(
    mut command: tokio::process::Command,
    name: &str,
    args: &[&str],
) -> anyhow::Result<ToolRun> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {name} {}", args.join(" ")))?;
    Ok(ToolRun {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
