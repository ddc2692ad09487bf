//! The sequence of measurements and what becomes of them: each throughput, rate and HTTP
//! test runs on every pair (direct, Ambit, and a stock ztunnel when the run has one) back to
//! back, the order rotating every round; latency tests alternate the pairs in short blocks
//! within a round. Results are kept per side; `figures` turns them into the report's rows.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};

use crate::clients::{self, ClientPod};
use crate::probe::{self, Meter};
use crate::servers::{ECHO_PORT, HOLD_PORT, HTTP_PORT, IPERF_PORT, Servers};
use crate::wait_until;

/// Every test, in the order a round runs them.
const TESTS: [&str; 9] = [
    "stream1", "stream8", "rr1", "rr1k", "connect", "rate", "wrk", "ab", "idle",
];
/// Tests whose samples are latencies, taken in alternating blocks.
const LATENCY_TESTS: [&str; 3] = ["rr1", "rr1k", "connect"];
/// Concurrent clients of the connection-rate test.
pub(crate) const RATE_CLIENTS: usize = 8;
/// Connections of wrk and of ab.
pub(crate) const HTTP_CONNECTIONS: usize = 50;
/// Latency tests alternate the sides in this many blocks per round, so that all see the same
/// machine (on a VM, whether a wake-up crosses CPUs moves a 10 µs round trip to 40).
const LATENCY_BLOCKS: usize = 20;
/// Idle connections opened at once before waiting for the server to have them all.
const IDLE_BATCH: usize = 500;

/// How long and how much to measure (see the bench's crate docs for the variables).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) seconds: u64,
    pub(crate) rounds: usize,
    pub(crate) samples: usize,
    pub(crate) idle: Vec<usize>,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) log: String,
    /// The `ambit` binary whose roles are measured.
    pub(crate) exe: std::path::PathBuf,
    /// The node proxies' own binary (`ambit-node`), if any; else they run as `ambit node`.
    pub(crate) node_exe: Option<std::path::PathBuf>,
    /// A stock ztunnel to measure beside Ambit (`ZTUNNEL_BIN`).
    pub(crate) ztunnel: Option<std::path::PathBuf>,
    /// What `ztunnel version` says of it.
    pub(crate) ztunnel_version: Option<String>,
}

/// One client pod and the server pod it talks to.
pub(crate) struct Pair {
    pub(crate) client: ClientPod,
    pub(crate) server: Ipv4Addr,
    pub(crate) servers: Servers,
}

/// Which path a measurement took: direct TCP, Ambit's node proxies (`Mesh`), or a stock
/// ztunnel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Side {
    Direct,
    Mesh,
    Ztunnel,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Mesh => "Ambit",
            Self::Ztunnel => "ztunnel",
        }
    }
}

/// The measurements taken so far.
pub(crate) struct Suite {
    pub(crate) settings: Settings,
    pub(crate) errors: Vec<String>,
    /// The node proxies of each meshed side.
    proxies: BTreeMap<Side, Vec<u32>>,
    /// Long-running servers (iperf3, the holders), whose CPU counts with the clients'.
    others: Vec<u32>,
    /// Per-round values (rates, CPU per unit, memory) by key and side.
    pub(crate) values: BTreeMap<(String, Side), Vec<f64>>,
    /// Latency samples by test and side, all rounds together.
    pub(crate) samples: BTreeMap<(String, Side), Vec<Duration>>,
    /// A word to print beside a figure (e.g. both node proxies' memory).
    pub(crate) notes: BTreeMap<String, String>,
}

impl Settings {
    pub(crate) fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let number = |name: &str, default: usize| {
            var(name)
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
                })
                .unwrap_or(default)
        };
        let idle = var("AMBIT_BENCH_IDLE").map_or_else(
            || vec![1_000, 10_000],
            |v| {
                v.split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("AMBIT_BENCH_IDLE: {n:?} is not a number"))
                    })
                    .collect()
            },
        );
        let only = var("AMBIT_BENCH_ONLY").map(|v| {
            let names: Vec<String> = v.split(',').map(|n| n.trim().to_owned()).collect();
            for n in &names {
                assert!(
                    TESTS.contains(&n.as_str()),
                    "AMBIT_BENCH_ONLY: unknown test {n:?}; tests: {TESTS:?}"
                );
            }
            names
        });
        let exe: std::path::PathBuf =
            var("AMBIT_BENCH_EXE").map_or_else(|| env!("CARGO_BIN_EXE_ambit").into(), Into::into);
        // This build's `ambit-node`, or the one beside another `ambit` to measure.
        let node_exe = if var("AMBIT_BENCH_EXE").is_some() {
            Some(exe.with_file_name("ambit-node")).filter(|p| p.is_file())
        } else {
            Some(env!("CARGO_BIN_EXE_ambit-node").into())
        };
        let ztunnel = var("ZTUNNEL_BIN").map(std::path::PathBuf::from);
        if let Some(path) = &ztunnel {
            assert!(
                path.is_file(),
                "ZTUNNEL_BIN={} is not a file",
                path.display()
            );
        }
        let ztunnel_version = ztunnel.as_deref().map(crate::ztunnel_version);
        Self {
            ztunnel,
            ztunnel_version,
            seconds: number("AMBIT_BENCH_SECONDS", 4) as u64,
            rounds: number("AMBIT_BENCH_ROUNDS", 2).max(1),
            samples: number("AMBIT_BENCH_SAMPLES", 4000).max(10),
            idle,
            only,
            log: var("AMBIT_BENCH_LOG").unwrap_or_else(|| "info".to_owned()),
            exe,
            node_exe,
        }
    }

    fn enabled(&self, test: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|t| t == test))
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    pub(crate) fn describe(&self) -> String {
        let sides = match &self.ztunnel_version {
            Some(version) => format!("direct, Ambit and ztunnel ({version}) in rotating order"),
            None => "direct and Ambit alternating (ztunnel column not run: ZTUNNEL_BIN unset)"
                .to_owned(),
        };
        format!(
            "{} rounds, {sides}; {} s per throughput and rate run; {} latency samples per side \
             and round ({} for connect + echo + close); node proxies' log filter `{}`",
            self.rounds,
            self.seconds,
            self.samples,
            self.samples / 2,
            self.log
        )
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "rounds": self.rounds,
            "samples": self.samples,
            "idle": self.idle,
            "only": self.only,
            "log": self.log,
            "exe": self.exe,
            "node_exe": self.node_exe,
            "ztunnel": self.ztunnel,
            "ztunnel_version": self.ztunnel_version,
        })
    }
}

impl Suite {
    pub(crate) fn new(
        settings: Settings,
        proxies: BTreeMap<Side, Vec<u32>>,
        others: Vec<u32>,
    ) -> Self {
        Self {
            settings,
            errors: Vec::new(),
            proxies,
            others,
            values: BTreeMap::new(),
            samples: BTreeMap::new(),
            notes: BTreeMap::new(),
        }
    }

    /// One exchange on each pair (a mesh's first fetches certificates and dials HBONE), then
    /// the node proxies' memory before any load.
    pub(crate) fn warm_up(&mut self, pairs: &[(Side, Pair)]) {
        for (side, pair) in pairs {
            let addr = SocketAddr::from((pair.server, ECHO_PORT));
            let ok = wait_until(Duration::from_secs(30), || {
                clients::connect_echo_close(&pair.client, addr, 1).is_ok()
            });
            assert!(ok, "no echo over the {} pair within 30 s", side.label());
        }
        self.rss("rss_idle");
    }

    /// Every enabled test, `rounds` times, then the idle-connection test on each meshed side.
    pub(crate) fn run(&mut self, pairs: &mut [(Side, Pair)]) {
        for round in 0..self.settings.rounds {
            let mut order: Vec<(Side, &Pair)> = pairs.iter().map(|(s, p)| (*s, p)).collect();
            let turn = round % order.len().max(1);
            order.rotate_left(turn);
            for test in TESTS.iter().filter(|t| **t != "idle") {
                if !self.settings.enabled(test) {
                    continue;
                }
                if LATENCY_TESTS.contains(test) {
                    if let Err(e) = self.latency_round(test, &order) {
                        let error = format!("{test} (round {round}): {e}");
                        eprintln!("  {error}");
                        self.errors.push(error);
                    }
                    continue;
                }
                for &(side, pair) in &order {
                    if let Err(e) = self.one(test, side, pair) {
                        let error = format!("{test} ({}, round {round}): {e}", side.label());
                        eprintln!("  {error}");
                        self.errors.push(error);
                    }
                }
            }
        }
        if self.settings.enabled("idle") {
            for (side, pair) in pairs.iter_mut().filter(|(s, _)| *s != Side::Direct) {
                if let Err(e) = self.idle(*side, pair) {
                    eprintln!("  idle ({}): {e}", side.label());
                    self.errors.push(format!("idle ({}): {e}", side.label()));
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        self.rss("rss_after");
    }

    /// A meter of the CPU time `side` uses: its node proxies, and (for "all") every process
    /// taking part, including the other sides' idle proxies.
    fn meter(&self, side: Side) -> Meter {
        let own = self.proxies.get(&side).cloned().unwrap_or_default();
        let mut others = self.others.clone();
        others.extend(
            self.proxies
                .iter()
                .filter(|(s, _)| **s != side)
                .flat_map(|(_, pids)| pids.iter().copied()),
        );
        Meter::start(&own, &others)
    }

    fn one(&mut self, test: &str, side: Side, pair: &Pair) -> std::io::Result<()> {
        let duration = self.settings.duration();
        let echo = SocketAddr::from((pair.server, ECHO_PORT));
        let url = format!("http://{}:{HTTP_PORT}/", pair.server);
        let client = &pair.client;
        let meshed = side != Side::Direct;
        let label = side.label();
        let meter = self.meter(side);
        match test {
            "stream1" | "stream8" => {
                let streams = if test == "stream1" { 1 } else { 8 };
                let iperf = SocketAddr::from((pair.server, IPERF_PORT));
                let (bps, bytes) = clients::iperf3(client, iperf, streams, duration)?;
                let cpu = meter.stop();
                eprintln!("  {test:8} {label}: {:.2} Gbit/s", bps / 1e9);
                self.push(&format!("{test}_gbps"), side, bps / 1e9);
                let gb = bytes / 1e9;
                self.push(&format!("cpu_all_per_gb_{test}"), side, cpu.all / gb);
                if meshed {
                    self.push(
                        &format!("cpu_proxies_per_gb_{test}"),
                        side,
                        cpu.proxies / gb,
                    );
                }
            }
            "rate" => {
                let rate = clients::connection_rate(client, echo, RATE_CLIENTS, duration)?;
                eprintln!("  {test:8} {label}: {rate:.0} connections/s");
                self.push("rate_cps", side, rate);
            }
            "wrk" | "ab" => {
                let (rps, done) = if test == "wrk" {
                    clients::wrk(client, &url, HTTP_CONNECTIONS, duration)?
                } else {
                    clients::ab(client, &url, HTTP_CONNECTIONS, duration)?
                };
                let cpu = meter.stop();
                eprintln!("  {test:8} {label}: {rps:.0} requests/s");
                self.push(&format!("{test}_rps"), side, rps);
                let per_10k = done / 1e4;
                self.push(&format!("cpu_all_per_10k_{test}"), side, cpu.all / per_10k);
                if meshed {
                    self.push(
                        &format!("cpu_proxies_per_10k_{test}"),
                        side,
                        cpu.proxies / per_10k,
                    );
                }
            }
            other => unreachable!("unknown test {other}"),
        }
        Ok(())
    }

    /// One round of a latency test: `samples` on each side, in [`LATENCY_BLOCKS`] blocks, the
    /// sides taking turns within each block in an order that rotates from block to block.
    fn latency_round(&mut self, test: &str, sides: &[(Side, &Pair)]) -> std::io::Result<()> {
        let per_block = (self.settings.samples / LATENCY_BLOCKS).max(1);
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); sides.len()];
        let mut conversations = Vec::new();
        if test != "connect" {
            let size = if test == "rr1" { 1 } else { 1024 };
            for (_, pair) in sides {
                let echo = SocketAddr::from((pair.server, ECHO_PORT));
                conversations.push(clients::Conversation::open(&pair.client, echo, size)?);
            }
        }
        for block in 0..LATENCY_BLOCKS {
            for turn in 0..sides.len() {
                let k = (block + turn) % sides.len();
                let pair = sides[k].1;
                let sample = match conversations.get_mut(k) {
                    Some(conversation) => conversation.sample(per_block)?,
                    None => {
                        let echo = SocketAddr::from((pair.server, ECHO_PORT));
                        clients::connect_echo_close(&pair.client, echo, per_block / 2)?
                    }
                };
                times[k].extend(sample);
            }
        }
        for ((side, _), samples) in sides.iter().zip(times) {
            self.report_samples(test, *side, samples);
        }
        Ok(())
    }

    /// Opens idle connections through one meshed side up to each count of the settings and
    /// records its node proxies' memory at each; then closes them all.
    fn idle(&mut self, side: Side, mesh: &mut Pair) -> std::io::Result<()> {
        let addr = SocketAddr::from((mesh.server, HOLD_PORT));
        let mut open = Vec::new();
        for &count in &self.settings.idle.clone() {
            while open.len() < count {
                let batch = IDLE_BATCH.min(count - open.len());
                open.extend(clients::open_idle(&mesh.client, addr, batch)?);
                let arrived = wait_until(Duration::from_secs(30), || {
                    mesh.servers.held() >= open.len()
                });
                if !arrived {
                    return Err(std::io::Error::other(format!(
                        "{} idle connections opened, {} reached the server",
                        open.len(),
                        mesh.servers.held()
                    )));
                }
            }
            std::thread::sleep(Duration::from_secs(1));
            eprintln!("  idle     {}: {count} connections open", side.label());
            self.rss_of(side, &format!("rss_{count}"));
        }
        drop(open);
        mesh.servers.release_held();
        // Let the proxies see the closes before the next side's measurement.
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }

    /// Every meshed side's node-proxy memory under `key`.
    fn rss(&mut self, key: &str) {
        let sides: Vec<Side> = self.proxies.keys().copied().collect();
        for side in sides {
            self.rss_of(side, key);
        }
    }

    /// The larger of `side`'s two node proxies' RSS under `key`, both in the figure's note.
    fn rss_of(&mut self, side: Side, key: &str) {
        let pids = self.proxies.get(&side).cloned().unwrap_or_default();
        let each: Vec<f64> = pids.iter().map(|p| probe::rss_mb(*p)).collect();
        let note = each
            .iter()
            .zip(["client node", "server node"])
            .map(|(mb, node)| format!("{node} {mb:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!("{}: {note}", side.label());
        self.notes
            .entry(key.to_owned())
            .and_modify(|n| {
                n.push_str("; ");
                n.push_str(&text);
            })
            .or_insert(text);
        let max = each.iter().copied().fold(0.0, f64::max);
        self.push(key, side, max);
    }

    fn report_samples(&mut self, test: &str, side: Side, times: Vec<std::time::Duration>) {
        let mut sorted = times.clone();
        sorted.sort();
        eprintln!(
            "  {test:8} {}: p50 {:.1} µs",
            side.label(),
            probe::percentile_us(&sorted, 0.5).unwrap_or(0.0)
        );
        if let Some(dir) = std::env::var_os("AMBIT_BENCH_SAMPLES_DIR") {
            let path = std::path::Path::new(&dir).join(format!("{test}-{side:?}.txt"));
            let text: String = times
                .iter()
                .map(|t| format!("{}\n", t.as_nanos()))
                .collect();
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
            if let Err(e) = written {
                eprintln!("  cannot write {}: {e}", path.display());
            }
        }
        self.samples
            .entry((test.to_owned(), side))
            .or_default()
            .extend(times);
    }

    fn push(&mut self, key: &str, side: Side, value: f64) {
        self.values
            .entry((key.to_owned(), side))
            .or_default()
            .push(value);
    }
}
