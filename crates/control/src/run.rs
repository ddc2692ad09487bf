//! Composition: sources → translation → WDS, the CA service, the listeners.
//!
//! [`ControlPlane::start`] serves the monitoring port first (so `/ready` can say what start-up
//! waits for), loads or creates the CA, and waits until the source has delivered its whole view:
//! a directory is read once; from the Kubernetes API every watched kind must have completed its
//! first list, however long that takes (a kind that never lists, say a missing CRD or RBAC rule,
//! keeps the control plane not ready and says so, rather than serving a view without it). Only
//! then does it translate, bind the WDS and CA listeners and return, so the first client already
//! gets the full state and a caller passing port 0 learns the real addresses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ambit_app::{Acceptor, Limits};
use ambit_identity::{CaConfig, CertificateAuthority};
use ambit_model::{Kind, MeshConfig, MeshSnapshot, retranslate, translate};
use ambit_xds::server::{AdsServer, AllowAll, Store};
use hyper::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::auth::{Authenticator, BootstrapTokens};
use crate::ca_service::CaService;
use crate::http::{Handler, Reply};
use crate::readiness::Readiness;
use crate::snapshot_view::SnapshotView;
use crate::source::dir::DirSource;
use crate::{SharedState, ca_bootstrap, debug, grpc_listener, resources};

/// How often start-up logs what it still waits for.
const PENDING_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Where the cluster objects come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SourceConfig {
    /// A directory of manifests, polled at `poll` intervals.
    Dir { path: PathBuf, poll: Duration },
    /// The Kubernetes API (in-cluster config or kubeconfig); callers authenticate by TokenReview.
    /// Without a plug-in CA in `ca_dir`, the self-signed root is kept in Secret
    /// `istio-ca-secret` of `namespace` (the control plane's own). The client comes from
    /// `kubeconfig` if given, else from `KUBECONFIG`, `~/.kube/config` or the pod's in-cluster
    /// configuration.
    Kubernetes {
        namespace: String,
        kubeconfig: Option<PathBuf>,
    },
}

/// Everything `ambit control` is told.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub source: SourceConfig,
    pub mesh: MeshConfig,
    /// Istio plug-in CA layout. With the directory source a self-signed root is created here on
    /// first start if empty; with the Kubernetes source an empty directory means the root in
    /// Secret `istio-ca-secret` (see [`crate::ca_bootstrap`]).
    pub ca_dir: PathBuf,
    /// `<token> <node>` lines authenticating node proxies (local mode).
    pub bootstrap_tokens: Option<PathBuf>,
    /// Plaintext WDS (15010); keep it on loopback.
    pub plaintext_addr: Option<SocketAddr>,
    /// WDS and CA over TLS with bearer tokens (15012).
    pub tls_addr: Option<SocketAddr>,
    /// `/metrics`, `/ready` (15014), and `/debug/…` unless `debug_addr` is set.
    pub monitoring_addr: Option<SocketAddr>,
    /// `/debug/…` on a listener of its own (and `/metrics`, `/ready` there too); when set, the
    /// monitoring port answers `/debug/…` with 404, so it can face the pod network while the
    /// mesh's views stay on loopback.
    pub debug_addr: Option<SocketAddr>,
    /// Quiet time after a change before translating, so bursts become one push.
    pub debounce: Duration,
    /// DNS names in the 15012 serving certificate.
    pub serving_names: Vec<String>,
}

/// A source, ready to read.
enum Source {
    Dir(DirSource, Duration),
    /// The client, and the control plane's namespace.
    Kubernetes(kube::Client, String),
}

/// Addresses actually bound.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoundAddrs {
    pub plaintext: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub monitoring: Option<SocketAddr>,
    pub debug: Option<SocketAddr>,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot bind {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("certificate authority in {dir}")]
    Ca {
        dir: String,
        source: ambit_identity::CaError,
    },
    #[error("bootstrap tokens")]
    Tokens(#[from] crate::auth::TokenFileError),
    #[error("TLS for the control-plane port")]
    Tls(#[from] ambit_identity::tls::TlsError),
    #[error("the 15012 port needs node authentication: pass bootstrap tokens")]
    NoAuthenticator,
    #[error("cannot reach the Kubernetes API")]
    Kubernetes(#[source] kube::Error),
    #[error("cannot use the kubeconfig {path}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    addrs: BoundAddrs,
    store: Store,
    state: SharedState,
    snapshot: SnapshotView,
    ca: Arc<CertificateAuthority>,
    tasks: JoinSet<()>,
}

impl ControlPlane {
    pub async fn start(config: ControlConfig) -> Result<Self, StartError> {
        let source = match &config.source {
            SourceConfig::Kubernetes {
                namespace,
                kubeconfig,
            } => Source::Kubernetes(kube_client(kubeconfig.as_deref()).await?, namespace.clone()),
            SourceConfig::Dir { path, poll } => Source::Dir(DirSource::new(path.clone()), *poll),
        };
        let readiness = match &source {
            Source::Kubernetes(..) => Readiness::waiting_for(
                Kind::ALL
                    .map(crate::source::kube::precondition)
                    .into_iter()
                    .chain([ca_bootstrap::PRECONDITION.to_owned()]),
            ),
            Source::Dir(..) => Readiness::waiting_for(Vec::<String>::new()),
        };
        let mut tasks = JoinSet::new();
        let mut addrs = BoundAddrs::default();
        // Monitoring first: while start-up waits, `/ready` says what for. The full handler is
        // put in place once everything it shows exists.
        let serving: Arc<OnceLock<Handler>> = Arc::default();
        if let Some(addr) = config.monitoring_addr {
            let listener = bind("monitoring", addr).await?;
            addrs.monitoring = Some(local_addr(&listener, addr));
            let handler = starting_handler(readiness.clone(), serving.clone());
            let handler = match config.debug_addr {
                Some(_) => without_debug(handler),
                None => handler,
            };
            tasks.spawn(crate::http::serve(listener, handler));
        }
        if let Some(addr) = config.debug_addr {
            let listener = bind("debug", addr).await?;
            addrs.debug = Some(local_addr(&listener, addr));
            tasks.spawn(crate::http::serve(
                listener,
                starting_handler(readiness.clone(), serving.clone()),
            ));
        }

        let ca_config = CaConfig::new(config.mesh.trust_domain.clone());
        let ca_error = |source| StartError::Ca {
            dir: config.ca_dir.display().to_string(),
            source,
        };
        let mut authenticator: Option<Arc<dyn Authenticator>> = match &config.bootstrap_tokens {
            Some(path) => Some(Arc::new(BootstrapTokens::load(path)?)),
            None => None,
        };

        let state = SharedState::new();
        // The first full read happens before any WDS or CA listener exists, so no client sees
        // a half-loaded mesh.
        let ca = match source {
            Source::Dir(mut source, poll) => {
                let ca = CertificateAuthority::load_or_init(&config.ca_dir, &ca_config)
                    .map_err(ca_error)?;
                source.scan(&state);
                tasks.spawn(source.run(state.clone(), poll));
                ca
            }
            Source::Kubernetes(client, namespace) => {
                tasks.spawn(crate::source::kube::run(
                    client.clone(),
                    state.clone(),
                    readiness.clone(),
                ));
                let ca = if CertificateAuthority::plugin_present(&config.ca_dir) {
                    let ca =
                        CertificateAuthority::load(&config.ca_dir, &ca_config).map_err(ca_error)?;
                    info!(dir = %config.ca_dir.display(), "using the plug-in CA");
                    readiness.done(ca_bootstrap::PRECONDITION);
                    ca
                } else {
                    let store = ca_bootstrap::SecretStore::new(client.clone(), &namespace);
                    ca_bootstrap::self_signed(&store, &ca_config, &readiness)
                        .await
                        .0
                };
                tasks.spawn(crate::root_publisher::run(
                    client.clone(),
                    ca.root_pem().to_owned(),
                ));
                wait_reporting(&readiness).await;
                if authenticator.is_none() {
                    let review = crate::token_review::TokenReviewAuthenticator::new(
                        client,
                        state.clone(),
                        config.mesh.trust_domain.clone(),
                    );
                    authenticator = Some(Arc::new(review));
                }
                ca
            }
        };
        let ca = Arc::new(ca);

        let store = Store::new();
        let (first, pods) = state.update_quietly(|s| {
            s.take_dirty();
            (translate(s, &config.mesh), resources::pod_enrollments(s))
        });
        // Policies before addresses: a workload should never list a policy not yet served.
        store.replace_all(
            ambit_proto::AUTHORIZATION_TYPE_URL,
            resources::authorizations(&first),
        );
        store.replace_all(
            ambit_proto::ADDRESS_TYPE_URL,
            resources::addresses(&first, &config.mesh),
        );
        store.replace_all(ambit_proto::POD_ENROLLMENT_TYPE_URL, pods);
        let snapshot = SnapshotView::new(first);
        tasks.spawn(translate_loop(
            state.clone(),
            store.clone(),
            config.mesh.clone(),
            config.debounce,
            snapshot.clone(),
        ));

        let ads = AdsServer::new(store.clone());
        let xds_stats = ads.stats();
        let ca_service = CaService::new(
            ca.clone(),
            authenticator
                .clone()
                .unwrap_or_else(|| Arc::new(crate::auth::DenyAll)),
            state.clone(),
        );
        let ca_stats = ca_service.stats();

        if let Some(addr) = config.plaintext_addr {
            let listener = bind("plaintext WDS", addr).await?;
            addrs.plaintext = Some(local_addr(&listener, addr));
            let acceptor = Acceptor::new("plaintext WDS", listener, &Limits::GRPC);
            let router = grpc_listener::grpc_server().add_service(
                ads.clone()
                    .with_authenticator(Arc::new(AllowAll))
                    .into_service(),
            );
            tasks.spawn(async move {
                let incoming = grpc_listener::plain_incoming(acceptor);
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    warn!(error = %e, "plaintext WDS server stopped");
                }
            });
        }
        if let Some(addr) = config.tls_addr {
            let authenticator = authenticator.clone().ok_or(StartError::NoAuthenticator)?;
            let serving = ca
                .issue_serving_certificate(
                    &config.serving_names,
                    Duration::from_secs(365 * 24 * 3600),
                )
                .map_err(|source| StartError::Ca {
                    dir: config.ca_dir.display().to_string(),
                    source,
                })?;
            let tls = ambit_identity::tls::control_plane_server_config(serving)?;
            let listener = bind("WDS/CA over TLS", addr).await?;
            addrs.tls = Some(local_addr(&listener, addr));
            let ads = ads
                .clone()
                .with_authenticator(Arc::new(crate::auth::XdsTokenCheck::new(authenticator)));
            let acceptor = Acceptor::new("WDS/CA over TLS", listener, &Limits::GRPC);
            let router = grpc_listener::grpc_server()
                .add_service(ads.into_service())
                .add_service(ca_service.clone().into_service());
            tasks.spawn(async move {
                if let Err(e) = router
                    .serve_with_incoming(grpc_listener::tls_incoming(acceptor, tls))
                    .await
                {
                    warn!(error = %e, "TLS WDS/CA server stopped");
                }
            });
        }
        // Only one writer ever sets it, here; a second set cannot happen.
        let _ = serving.set(monitoring_handler(
            state.clone(),
            snapshot.clone(),
            xds_stats,
            ca_stats,
        ));
        info!(?addrs, trust_domain = %config.mesh.trust_domain, "control plane started");
        Ok(Self {
            addrs,
            store,
            state,
            snapshot,
            ca,
            tasks,
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// The WDS resources as served.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// The latest translation.
    pub fn snapshot(&self) -> Arc<MeshSnapshot> {
        self.snapshot.get()
    }

    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// Runs until a task ends (which only happens on a fatal error) or the future is dropped.
    pub async fn wait(mut self) {
        if let Some(result) = self.tasks.join_next().await {
            warn!(?result, "a control-plane task ended; shutting down");
        }
    }
}

async fn translate_loop(
    state: SharedState,
    store: Store,
    mesh: MeshConfig,
    debounce: Duration,
    snapshot: SnapshotView,
) {
    let mut changes = state.subscribe();
    // A burst of changes is translated once, but never later than this after the first.
    let max_delay = debounce * 10;
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        let first = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout(debounce, changes.changed()).await {
                Err(_quiet) => break,
                Ok(Err(_closed)) => return,
                Ok(Ok(())) if first.elapsed() >= max_delay => break,
                Ok(Ok(())) => {}
            }
        }
        let started = tokio::time::Instant::now();
        // Only the namespaces touched since the last pass are translated again; the dirty set
        // is taken under the same lock as the read, so no change slips between them.
        snapshot.update(|current| {
            let (changed, pods) = state.update_quietly(|s| {
                let dirty = s.take_dirty();
                let changed = retranslate(s, &mesh, current, &dirty);
                (changed, resources::pod_enrollments(s))
            });
            // Pods first: an agent waiting to decide a pod's ADD hears of it as early as can be.
            store.replace_all(ambit_proto::POD_ENROLLMENT_TYPE_URL, pods);
            match changed {
                Some(changes) => {
                    let upserts = resources::addresses_named(current, &mesh, &changes.upserts);
                    store.apply(ambit_proto::ADDRESS_TYPE_URL, upserts, changes.removals);
                }
                None => {
                    store.replace_all(
                        ambit_proto::AUTHORIZATION_TYPE_URL,
                        resources::authorizations(current),
                    );
                    store.replace_all(
                        ambit_proto::ADDRESS_TYPE_URL,
                        resources::addresses(current, &mesh),
                    );
                }
            }
        });
        debug!(elapsed = ?started.elapsed(), "mesh translated and stored");
    }
}

/// Waits until `readiness` holds, logging what is still pending every
/// [`PENDING_REPORT_INTERVAL`].
async fn wait_reporting(readiness: &Readiness) {
    let mut report = tokio::time::interval(PENDING_REPORT_INTERVAL);
    report.tick().await;
    loop {
        tokio::select! {
            () = readiness.wait() => return,
            _ = report.tick() => {
                let pending = readiness.describe();
                warn!(pending = %pending.trim_end().replace('\n', "; "), "not serving yet: the view of the cluster is incomplete");
            }
        }
    }
}

/// Before start-up completes: `/ready` (and everything else) answers 503 with what is pending;
/// after, `serving` answers.
fn starting_handler(readiness: Readiness, serving: Arc<OnceLock<Handler>>) -> Handler {
    Arc::new(move |path, query| match serving.get() {
        Some(handler) => handler(path, query),
        None => Reply::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}", readiness.describe()),
        ),
    })
}

/// `handler` with `/debug/…` answered 404 (those views are served on the debug port).
fn without_debug(handler: Handler) -> Handler {
    Arc::new(move |path, query| {
        if path == "/debug" || path.starts_with("/debug/") {
            Reply::not_found(path)
        } else {
            handler(path, query)
        }
    })
}

fn monitoring_handler(
    state: SharedState,
    snapshot: SnapshotView,
    xds: Arc<ambit_xds::server::ServerStats>,
    ca: Arc<crate::ca_service::CaStats>,
) -> Handler {
    Arc::new(move |path, query| {
        if matches!(path, "/ready" | "/healthz/ready") {
            return Reply::text(StatusCode::OK, "ready\n");
        }
        if matches!(path, "/metrics" | "/stats/prometheus") {
            // Counts only: computed in place rather than on a copy of the mesh.
            let text = snapshot.read(|snap| debug::metrics(&xds, &ca, snap));
            let mut reply = Reply::text(StatusCode::OK, text);
            reply.content_type = "text/plain; version=0.0.4";
            return reply;
        }
        let snap = snapshot.get();
        match path {
            "/debug/workloads" => Reply::json(&debug::workloads(&snap)),
            "/debug/pods" => Reply::json(&debug::pods(&snap)),
            "/debug/services" => Reply::json(&debug::services(&snap)),
            "/debug/policies" => Reply::json(&state.read(|s| debug::policies(s, &snap))),
            "/debug/authorize" => debug::authorize(&snap, query),
            other => Reply::not_found(other),
        }
    })
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, StartError> {
    let Some(path) = kubeconfig else {
        return kube::Client::try_default()
            .await
            .map_err(StartError::Kubernetes);
    };
    let kubeconfig_error = |source| StartError::Kubeconfig {
        path: path.display().to_string(),
        source,
    };
    let file = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(kubeconfig_error)?;
    kube::Client::try_from(config).map_err(StartError::Kubernetes)
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(listener: &TcpListener, requested: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(requested)
}
