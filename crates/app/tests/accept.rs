//! [`Acceptor`] under pressure: the connection cap, and descriptors running out.
//!
//! The descriptor test runs an echo server in a child process (this test binary again, with
//! `AMBIT_ACCEPT_CHILD` set) under `ulimit -n 64`, holds more connections to it than it has
//! descriptors, and measures the child's CPU time from `/proc/<pid>/stat` while the pressure
//! lasts: an accept loop that retried at once would spin a core. Then the pressure ends and a
//! new client must be served.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ambit_app::{Acceptor, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CHILD_ENV: &str = "AMBIT_ACCEPT_CHILD";

/// Serves on `acceptor` for ever: each connection gets back every byte it sends.
async fn echo(acceptor: Acceptor) {
    loop {
        let (mut conn, _) = acceptor.accept().await;
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Whether a byte sent on `stream` comes back within `wait`.
fn echoes(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).expect("set timeout");
    if stream.write_all(b"x").is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_clients_back_until_a_place_frees() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let limits = Limits {
        max_connections: 2,
        ..Limits::HTTP
    };
    let acceptor = Acceptor::new("test", listener, &limits);
    let addr = acceptor.local_addr().expect("addr");
    tokio::spawn(echo(acceptor));
    tokio::task::spawn_blocking(move || {
        let mut first = TcpStream::connect(addr).expect("connect");
        let mut second = TcpStream::connect(addr).expect("connect");
        assert!(echoes(&mut first, Duration::from_secs(5)));
        assert!(echoes(&mut second, Duration::from_secs(5)));
        let mut third = TcpStream::connect(addr).expect("connect (into the backlog)");
        assert!(
            !echoes(&mut third, Duration::from_millis(500)),
            "a third connection was served past a cap of 2"
        );
        drop(first);
        let mut byte = [0u8; 1];
        third
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        assert!(
            matches!(third.read(&mut byte), Ok(1)),
            "the waiting client is served once a place frees"
        );
    })
    .await
    .expect("client thread");
}

/// The child: an echo server on loopback under the cap of [`Limits::GRPC`]; prints its port.
#[test]
fn child_echo_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let acceptor = Acceptor::new("child", listener, &Limits::GRPC);
        println!("port {}", acceptor.local_addr().expect("addr").port());
        echo(acceptor).await;
    });
}

struct ChildServer {
    child: Child,
    addr: SocketAddr,
}

impl ChildServer {
    fn start(max_fds: u32) -> Self {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n {max_fds} && exec \"$0\" --exact child_echo_server --nocapture --test-threads 1"
            ))
            .arg(exe)
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child server");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("the child printed no port")
                .expect("child stdout");
            // libtest may have begun the line with `test child_echo_server ... `.
            if let Some((_, port)) = line.rsplit_once("port ") {
                break port.trim().parse::<u16>().expect("a port");
            }
        };
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// User plus system CPU time the child has used, in clock ticks (1/100 s).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read the child's /proc stat");
        // Fields after the command name, which ends with the last ')'.
        let rest = &stat[stat.rfind(')').expect("stat shape") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn out_of_descriptors_the_loop_pauses_and_serves_again_after() {
    let server = ChildServer::start(64);
    let mut probe = TcpStream::connect(server.addr).expect("connect");
    assert!(echoes(&mut probe, Duration::from_secs(5)), "child serves");
    drop(probe);

    // More connections than the child has descriptors: its accepts fail with EMFILE while the
    // rest wait in the backlog, keeping the listener readable.
    let held: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let window = Duration::from_secs(3);
    let (before, started) = (server.cpu_ticks(), Instant::now());
    std::thread::sleep(window);
    let used = server.cpu_ticks() - before;
    let share = used as f64 / (started.elapsed().as_secs_f64() * 100.0);
    eprintln!(
        "child CPU while out of descriptors: {used} ticks in {window:?} ({share:.3} of a core)"
    );
    assert!(
        share < 0.2,
        "the accept loop spins while out of descriptors: {share:.3} of a core"
    );

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut client) = TcpStream::connect(server.addr)
            && echoes(&mut client, Duration::from_secs(2))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the child never served again");
        std::thread::sleep(Duration::from_millis(100));
    }
}
