//! The demo's applications, as tokio tasks bound to their pods' addresses. None of them knows
//! about the mesh: the servers listen on their pod IP, the clients connect through their node
//! proxy's SOCKS5 listener from a socket bound to their pod IP (which is how a node proxy in
//! shared mode tells its workloads apart).
//!
//! - `node-exporter` answers `GET /metrics` with a few Prometheus lines;
//! - `prometheus-0` scrapes it every second with a minimal HTTP/1.0 client;
//! - `server` echoes what it reads;
//! - `client` sends it one line a second, a new connection each time.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::manifests::{Layout, Pod};

/// How long one scrape or one echo may take before it counts as failed.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head `node-exporter` reads.
const MAX_REQUEST: usize = 8 * 1024;

/// Successes and failures of one client.
#[derive(Debug, Default)]
pub(super) struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// A [`Tally`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) ok: u64,
    pub(super) failed: u64,
}

/// The four running workloads.
#[derive(Debug)]
pub(super) struct Workloads {
    stop_clients: watch::Sender<bool>,
    stop_servers: watch::Sender<bool>,
    clients: JoinSet<()>,
    servers: JoinSet<()>,
    pub(super) scrapes: Arc<Tally>,
    pub(super) echoes: Arc<Tally>,
}

impl Workloads {
    /// Binds the servers, then starts the clients (their first exchange happens at once).
    pub(super) async fn start(layout: &Layout) -> anyhow::Result<Self> {
        let (stop_servers, servers_stopped) = watch::channel(false);
        let (stop_clients, clients_stopped) = watch::channel(false);
        let exporter = bind(&layout.node_exporter).await?;
        let echo = bind(&layout.server).await?;
        let mut servers = JoinSet::new();
        servers.spawn(serve(exporter, servers_stopped.clone(), serve_metrics));
        servers.spawn(serve(echo, servers_stopped, serve_echo));

        let (scrapes, echoes) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
        let mut clients = JoinSet::new();
        let socks = layout.node_of(&layout.prometheus).socks5();
        let (src, dst) = (layout.prometheus.ip, target(&layout.node_exporter)?);
        clients.spawn(every_second(
            clients_stopped.clone(),
            scrapes.clone(),
            move || scrape(src, socks, dst),
        ));
        let socks = layout.node_of(&layout.client).socks5();
        let (src, dst) = (layout.client.ip, target(&layout.server)?);
        let mut sent = 0u64;
        clients.spawn(every_second(clients_stopped, echoes.clone(), move || {
            sent += 1;
            echo_once(src, socks, dst, format!("hello {sent} from client\n"))
        }));
        Ok(Self {
            stop_clients,
            stop_servers,
            clients,
            servers,
            scrapes,
            echoes,
        })
    }

    /// Stops the clients first, letting an exchange in flight finish (bounded), then the
    /// servers, so no exchange fails only because the demo is ending.
    pub(super) async fn stop(mut self) {
        for (stop, tasks) in [
            (&self.stop_clients, &mut self.clients),
            (&self.stop_servers, &mut self.servers),
        ] {
            let _ = stop.send(true);
            let finished = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(EXCHANGE_TIMEOUT, finished)
                .await
                .is_err()
            {
                tasks.abort_all();
            }
        }
    }
}

impl Tally {
    pub(super) fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    fn record(&self, result: &anyhow::Result<()>) {
        let counter = if result.is_ok() {
            &self.ok
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

// === servers ===

async fn bind(pod: &Pod) -> anyhow::Result<TcpListener> {
    let addr = target(pod)?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen as {} on {addr}", pod.name))
}

fn target(pod: &Pod) -> anyhow::Result<SocketAddr> {
    pod.addr()
        .with_context(|| format!("{} serves no port", pod.name))
}

/// Accepts until told to stop; each connection is served on its own task.
async fn serve<F, Fut>(listener: TcpListener, mut stopped: watch::Receiver<bool>, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let connection = handle(stream);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, connection).await;
                    });
                }
                Err(e) => tracing::warn!(error = %e, "demo workload cannot accept"),
            },
            _ = stopped.changed() => return,
        }
    }
}

/// `node-exporter`: one HTTP/1.0 answer per connection.
async fn serve_metrics(mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let response = if head.starts_with(b"GET /metrics ") {
        let body = "# HELP demo_node_cpu_seconds_total Seconds the CPUs spent in each mode.\n\
                    # TYPE demo_node_cpu_seconds_total counter\n\
                    demo_node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 123\n\
                    demo_node_cpu_seconds_total{cpu=\"1\",mode=\"user\"} 456\n\
                    # HELP demo_node_memory_free_bytes Free memory.\n\
                    # TYPE demo_node_memory_free_bytes gauge\n\
                    demo_node_memory_free_bytes 1073741824\n";
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// `server`: echoes until the client closes.
async fn serve_echo(mut stream: TcpStream) -> std::io::Result<()> {
    let (mut reader, mut writer) = stream.split();
    tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await
}

// === clients ===

/// Runs `exchange` now and then every second until told to stop, counting the outcomes.
async fn every_second<F, Fut>(
    mut stopped: watch::Receiver<bool>,
    tally: Arc<Tally>,
    mut exchange: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return,
        }
        let result = match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange()).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("no answer within {EXCHANGE_TIMEOUT:?}")),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %format!("{e:#}"), "demo exchange failed");
        }
        tally.record(&result);
    }
}

/// `prometheus-0`: `GET /metrics` over HTTP/1.0, expecting a 200 with the exporter's samples.
async fn scrape(src: Ipv4Addr, socks: SocketAddr, dst: SocketAddr) -> anyhow::Result<()> {
    let mut stream = socks5_connect(src, socks, dst).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {dst}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.split_whitespace().nth(1).unwrap_or("none");
    if status != "200" {
        bail!("scrape of {dst} answered status {status}");
    }
    if !response.contains("demo_node_cpu_seconds_total{") {
        bail!("scrape of {dst} returned no samples");
    }
    Ok(())
}

/// `client`: one line out, the same line back.
async fn echo_once(
    src: Ipv4Addr,
    socks: SocketAddr,
    dst: SocketAddr,
    line: String,
) -> anyhow::Result<()> {
    let stream = socks5_connect(src, socks, dst).await?;
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(line.as_bytes()).await?;
    let mut back = String::new();
    stream.read_line(&mut back).await?;
    if back != line {
        bail!("{dst} echoed {back:?} for {line:?}");
    }
    stream.get_mut().shutdown().await?;
    Ok(())
}

/// Connects from `src` through the SOCKS5 listener `socks` to `dst` (RFC 1928, no
/// authentication, IPv4 CONNECT); the node proxy identifies the workload by `src`.
async fn socks5_connect(
    src: Ipv4Addr,
    socks: SocketAddr,
    dst: SocketAddr,
) -> anyhow::Result<TcpStream> {
    let SocketAddr::V4(dst_v4) = dst else {
        bail!("the demo only speaks IPv4 ({dst})");
    };
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((src, 0)))
        .with_context(|| format!("cannot bind a client socket to {src}"))?;
    let mut stream = socket
        .connect(socks)
        .await
        .with_context(|| format!("cannot reach the node proxy's SOCKS5 listener {socks}"))?;
    stream.write_all(&[5, 1, 0]).await?;
    let mut greeting = [0u8; 2];
    stream.read_exact(&mut greeting).await?;
    if greeting != [5, 0] {
        bail!("SOCKS5 greeting refused by {socks}: {greeting:?}");
    }
    let mut request = vec![5, 1, 0, 1];
    request.extend(dst_v4.ip().octets());
    request.extend(dst_v4.port().to_be_bytes());
    stream.write_all(&request).await?;
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        bail!(
            "the node proxy refused {src} → {dst} (SOCKS5 reply {}; see its `connection failed` log)",
            reply[1]
        );
    }
    Ok(stream)
}
