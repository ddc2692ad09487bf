//! Applications that run in pods: tokio tasks of this process whose sockets were created inside
//! the pod's network namespace, so the kernel treats them exactly as a process in the pod (the
//! pod's capture rules redirect them). None of them knows about the mesh.
//!
//! - [`serve_metrics`]: an HTTP exporter answering `GET /metrics` (node-exporter's role);
//! - [`scrape_every`]: fetches a `/metrics` URL periodically (Prometheus's role);
//! - [`serve_echo`] / [`echo_every`]: an echo server and a client opening a new connection per
//!   line.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambit_netns::Netns;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A metric name the exporter serves: a packet capture must never show it in plaintext when
/// both pods are enrolled.
pub const EXPORTER_METRIC: &str = "ambit_demo_exporter_requests_total";

const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8 * 1024;

/// Successes and failures of a client.
#[derive(Debug, Default)]
pub struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn record(&self, result: io::Result<()>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
            }
        }
    }
}

/// A TCP listener on `addr` inside `netns`.
pub fn listen_in(netns: &Netns, addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = netns.run_io(move || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })?;
    TcpListener::from_std(socket.into())
}

/// A TCP connection to `addr` from a socket created inside `netns`.
pub async fn connect_in(netns: &Netns, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = netns.run_io(move || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })?;
    let socket = TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(EXCHANGE_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr}")))?
}

/// Serves `GET /metrics` on `addr` inside `netns` until the task is aborted.
pub fn serve_metrics(netns: &Netns, addr: SocketAddr) -> io::Result<JoinHandle<()>> {
    let listener = listen_in(netns, addr)?;
    let served = Arc::new(AtomicU64::new(0));
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                let _ = answer_metrics(stream, n).await;
            });
        }
    }))
}

async fn answer_metrics(stream: TcpStream, n: u64) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        head.push_str(&line);
        if head.len() > MAX_REQUEST {
            return Err(io::Error::other("request head too long"));
        }
    }
    let body = format!(
        "# HELP {EXPORTER_METRIC} Scrapes answered.\n# TYPE {EXPORTER_METRIC} counter\n\
         {EXPORTER_METRIC} {n}\nup 1\n"
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = reader.into_inner();
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Fetches `http://target/metrics` from inside `netns` every `period`, a new connection each
/// time, until the task is aborted.
pub fn scrape_every(
    netns: Netns,
    target: SocketAddr,
    period: Duration,
) -> (Arc<Tally>, JoinHandle<()>) {
    every(period, "scrape", move |_| scrape(netns.clone(), target))
}

async fn scrape(netns: Netns, target: SocketAddr) -> io::Result<()> {
    let mut stream = connect_in(&netns, target).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    if body.starts_with("HTTP/1.1 200") && body.contains(EXPORTER_METRIC) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "unexpected answer: {:?}",
            body.lines().next().unwrap_or("")
        )))
    }
}

/// Echoes every line on `addr` inside `netns` until the task is aborted.
pub fn serve_echo(netns: &Netns, addr: SocketAddr) -> io::Result<JoinHandle<()>> {
    let listener = listen_in(netns, addr)?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    }))
}

/// Sends one line to the echo server at `target` every `period` from inside `netns`, a new
/// connection each time, and checks the answer.
pub fn echo_every(
    netns: Netns,
    target: SocketAddr,
    period: Duration,
) -> (Arc<Tally>, JoinHandle<()>) {
    every(period, "echo", move |sent| {
        echo(netns.clone(), target, format!("hello {sent}\n"))
    })
}

async fn echo(netns: Netns, target: SocketAddr, line: String) -> io::Result<()> {
    let stream = connect_in(&netns, target).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    if answer == line {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "echoed {answer:?}, sent {line:?}"
        )))
    }
}

/// Runs `exchange(n)` every `period`, n counting from 1, until the task is aborted; each
/// exchange is given [`EXCHANGE_TIMEOUT`] (past it, a failure named `label`) and its outcome
/// goes into the returned tally.
fn every<F, Fut>(
    period: Duration,
    label: &'static str,
    mut exchange: F,
) -> (Arc<Tally>, JoinHandle<()>)
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>> + Send,
{
    let tally = Arc::new(Tally::default());
    let counts = tally.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        let mut n = 0u64;
        loop {
            ticks.tick().await;
            n += 1;
            let result = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(n))
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, label)));
            counts.record(result);
        }
    });
    (tally, task)
}
