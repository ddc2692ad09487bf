//! `--with-prometheus`: Debian's real `prometheus` as the scraper in pod
//! `prometheus/prometheus-0`, started inside the pod's network namespace so its scrapes are
//! captured like any application's. Its API (`127.0.0.1:9090` inside the pod) is read from a
//! socket in the same namespace.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use ambit_netns::Netns;
use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::workloads::connect_in;

const API: &str = "127.0.0.1:9090";

/// A running Prometheus; killed on drop.
#[derive(Debug)]
pub(super) struct Prometheus {
    child: Child,
}

pub(super) fn start(netns: &Netns, target: SocketAddr, dir: &Path) -> anyhow::Result<Prometheus> {
    let dir = dir.join("prometheus");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 900ms}}\n\
             scrape_configs:\n  - job_name: node-exporter\n    static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .with_context(|| format!("cannot write {}", config.display()))?;
    let mut command = Command::new("prometheus");
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={API}"))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = netns
        .spawn(command)
        .context("cannot start prometheus (apt-get install prometheus)")?;
    Ok(Prometheus { child })
}

impl Prometheus {
    /// "prometheus: target up" or what is wrong, from Prometheus's own API.
    pub(super) async fn target_health(&self, netns: &Netns) -> String {
        match query(netns, "/api/v1/targets?state=active").await {
            Ok(body) if body.contains("\"health\":\"up\"") => "prometheus: target up".to_owned(),
            Ok(body) if body.contains("\"health\":\"down\"") => {
                "prometheus: target DOWN".to_owned()
            }
            Ok(_) => "prometheus: no scrape yet".to_owned(),
            Err(e) => format!("prometheus API not answering yet ({e})"),
        }
    }

    /// (successful, failed) scrapes, counted by Prometheus (`up` samples equal to 1 and 0).
    pub(super) async fn scrape_counts(&self, netns: &Netns) -> (u64, u64) {
        let count = |q: &'static str| async move {
            query(netns, q)
                .await
                .ok()
                .and_then(|body| first_value(&body))
                .unwrap_or(0)
        };
        (
            count("/api/v1/query?query=sum(count_over_time((up==1)[1h:1s]))").await,
            count("/api/v1/query?query=sum(count_over_time((up==0)[1h:1s]))").await,
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn query(netns: &Netns, path: &str) -> std::io::Result<String> {
    let addr: SocketAddr = API.parse().map_err(std::io::Error::other)?;
    let mut stream = connect_in(netns, addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {API}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// The first `"value":[<time>,"<n>"]` of a query answer.
fn first_value(body: &str) -> Option<u64> {
    let rest = body.split("\"value\":[").nth(1)?;
    let n = rest.split(",\"").nth(1)?.split('"').next()?;
    n.parse::<f64>().ok().map(|v| v as u64)
}
