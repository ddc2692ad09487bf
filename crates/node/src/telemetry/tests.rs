//! Unit tests of the metrics registry's rendering; the exact label sets of real connections are
//! asserted in `tests/telemetry.rs`.

use std::time::{Duration, UNIX_EPOCH};

use super::exposition::sample;
use super::metrics::Metrics;

#[test]
fn label_values_are_escaped() {
    let mut out = String::new();
    sample(&mut out, "m", &[("a", "x\"y\\z\nw")], 3);
    assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\"} 3\n");
}

#[test]
fn families_without_samples_still_describe_themselves() {
    let text = Metrics::with_build_tag("1.2.3").render();
    assert!(text.contains("# TYPE istio_tcp_connections_opened_total counter\n"));
    assert!(text.contains("istio_build{component=\"ztunnel\",tag=\"1.2.3\"} 1\n"));
    assert!(!text.contains("istio_tcp_connections_opened_total{"));
}

#[test]
fn gauges_are_set_and_removed() {
    let m = Metrics::new();
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    m.set_certificate_expiry("spiffe://cluster.local/ns/a/sa/b", t);
    m.set_xds_connection_state("istiod:15012", true);
    let text = m.render();
    assert!(text.contains(
            "ambit_certificate_expiry_seconds{identity=\"spiffe://cluster.local/ns/a/sa/b\"} 1700000000\n"
        ));
    assert!(text.contains("ambit_xds_connection_state{target=\"istiod:15012\"} 1\n"));
    m.remove_certificate_expiry("spiffe://cluster.local/ns/a/sa/b");
    m.set_xds_connection_state("istiod:15012", false);
    let text = m.render();
    assert!(!text.contains("ambit_certificate_expiry_seconds{"));
    assert!(text.contains("ambit_xds_connection_state{target=\"istiod:15012\"} 0\n"));
}

#[test]
fn log_identities_only_for_mutual_tls() {
    use super::access_log::AccessRecord;
    use super::{ConnectionInfo, Direction, PeerInfo, SecurityPolicy};
    let peer = |id: &str| PeerInfo {
        workload: String::new(),
        app: "app".into(),
        identity: id.into(),
        ..PeerInfo::default()
    };
    let mut info = ConnectionInfo {
        direction: Direction::Inbound,
        src_addr: ([10, 0, 0, 1], 1000).into(),
        src: peer("spiffe://td/ns/a/sa/b"),
        dst_addr: ([10, 0, 0, 2], 80).into(),
        dst_hbone_addr: None,
        dst_service: None,
        dst: peer("spiffe://td/ns/c/sa/d"),
        security: SecurityPolicy::Unknown,
    };
    let r = AccessRecord::new(&info, 0, 0, Duration::ZERO, None);
    assert_eq!((r.src_identity, r.dst_identity), (None, None));
    // A workload without a name is logged by its canonical service, as ztunnel does.
    assert_eq!(r.src_workload.as_deref(), Some("app"));
    info.security = SecurityPolicy::MutualTls;
    let r = AccessRecord::new(&info, 0, 0, Duration::ZERO, None);
    assert_eq!(r.src_identity.as_deref(), Some("spiffe://td/ns/a/sa/b"));
    assert_eq!(r.dst_addr, info.dst_addr);
    assert_eq!(r.dst_hbone_addr, None);
}

// === the access log's writer thread ===

mod writer {
    use std::io::Write;
    use std::sync::mpsc;
    use std::sync::{Arc, Condvar, Mutex};

    use crate::telemetry::access_log::{self, Entry, Queue};
    use crate::telemetry::{
        ConnectionInfo, Direction, LogFormat, Metrics, PeerInfo, SecurityPolicy, Telemetry,
    };

    /// Lines written through a subscriber, each with the name of the thread that wrote it. A
    /// write on the thread named `hold_on` waits (once it has said so on `held`) until
    /// [`Lines::release`].
    #[derive(Clone, Default)]
    struct Lines {
        lines: Arc<Mutex<Vec<(String, String)>>>,
        hold_on: Option<&'static str>,
        gate: Arc<(Mutex<bool>, Condvar)>,
        held: Option<Arc<Mutex<mpsc::Sender<()>>>>,
    }

    struct LineWriter(Lines);

    impl Write for LineWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            if self.0.hold_on == Some(thread.as_str()) {
                if let Some(held) = &self.0.held {
                    let _ = held.lock().unwrap().send(());
                }
                let (open, opened) = &*self.0.gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = opened.wait(open).unwrap();
                }
            }
            let text = String::from_utf8(buf.to_vec()).unwrap();
            self.0
                .lines
                .lock()
                .unwrap()
                .push((text.trim_end().to_owned(), thread));
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        /// The binary's text formatter, its clock stopped at the epoch.
        fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
            let lines = self.clone();
            ambit_logging::subscriber(
                ambit_logging::Format::Text,
                ambit_logging::Clock::Fixed(std::time::UNIX_EPOCH),
                move || LineWriter(lines.clone()),
            )
        }

        fn taken(&self) -> Vec<(String, String)> {
            self.lines.lock().unwrap().clone()
        }

        fn release(&self) {
            let (open, opened) = &*self.gate;
            *open.lock().unwrap() = true;
            opened.notify_all();
        }
    }

    fn refused(n: usize) -> Entry {
        Entry::Refused {
            src: "10.0.0.1:1000".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            direction: Direction::Inbound,
            error: format!("entry {n}"),
        }
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            direction: Direction::Outbound,
            src_addr: "10.0.0.1:41234".parse().unwrap(),
            src: PeerInfo::default(),
            dst_addr: "10.0.0.2:8080".parse().unwrap(),
            dst_hbone_addr: None,
            dst_service: None,
            dst: PeerInfo::default(),
            security: SecurityPolicy::Unknown,
        }
    }

    #[tokio::test]
    async fn lines_of_the_data_path_are_written_by_the_writer_thread() {
        let lines = Lines::default();
        let _default = tracing::subscriber::set_default(lines.subscriber());
        let telemetry = Telemetry::new(std::sync::Arc::new(Metrics::new()), LogFormat::Text);
        let mut guard = telemetry.open(info());
        guard.add_sent(5);
        guard.finish(None);
        telemetry.log_refused(&info(), "no such workload");
        access_log::flush();

        let got = lines.taken();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].0.starts_with(
                "1970-01-01T00:00:00.000000Z\tinfo\taccess\tconnection complete\t\
                 src.addr=10.0.0.1:41234 dst.addr=10.0.0.2:8080 direction=\"outbound\" \
                 bytes_sent=5 bytes_recv=0 duration=\""
            ),
            "{got:?}"
        );
        assert_eq!(
            got[1].0,
            "1970-01-01T00:00:00.000000Z\twarn\taccess\tconnection failed\t\
             src.addr=10.0.0.1:41234 dst.addr=10.0.0.2:8080 direction=\"outbound\" \
             error=\"no such workload\""
        );
        for (line, thread) in &got {
            assert_eq!(thread, "access-log", "written on the data path: {line}");
        }
    }

    #[test]
    fn lines_outside_a_runtime_are_written_in_place_at_once() {
        let lines = Lines::default();
        tracing::subscriber::with_default(lines.subscriber(), || {
            access_log::submit(refused(1));
            let got = lines.taken();
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].1, std::thread::current().name().unwrap_or(""));
        });
    }

    #[test]
    fn a_full_queue_writes_in_place_and_loses_nothing() {
        const WRITER: &str = "access-log-full-test";
        let (held_tx, held) = mpsc::channel();
        let lines = Lines {
            hold_on: Some(WRITER),
            held: Some(Arc::new(Mutex::new(held_tx))),
            ..Lines::default()
        };
        let queue = Queue::start(4, WRITER).unwrap();
        tracing::subscriber::with_default(lines.subscriber(), || {
            // The writer takes the first entry and blocks writing it (a stuck stderr).
            queue.submit(refused(0));
            held.recv_timeout(std::time::Duration::from_secs(10))
                .expect("the writer thread never wrote");
            // Four fit in the queue; the six after them are written here and now.
            for n in 1..=10 {
                queue.submit(refused(n));
            }
            assert_eq!(queue.written_in_place(), 6);
            let here: Vec<String> = lines.taken().into_iter().map(|(l, _)| l).collect();
            assert_eq!(here.len(), 6, "{here:?}");
            for (line, n) in here.iter().zip(5..) {
                assert!(line.ends_with(&format!("error=\"entry {n}\"")), "{line}");
            }
        });
        lines.release();
        queue.flush();
        let mut errors: Vec<usize> = lines
            .taken()
            .iter()
            .map(|(line, _)| {
                let n = line.rsplit("entry ").next().unwrap().trim_end_matches('"');
                n.parse().unwrap()
            })
            .collect();
        errors.sort_unstable();
        assert_eq!(
            errors,
            (0..=10).collect::<Vec<_>>(),
            "a line was lost or doubled"
        );
        queue.close();
    }
}
