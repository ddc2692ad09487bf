//! `ambit demo`: the flags of the local mesh that [`ambit_localmesh::demo`] builds and runs
//! (pods as network namespaces, the roles as processes of this binary, real capture).

use clap::Args;

/// The log filter unless `--log-level` or `RUST_LOG` say otherwise: access logs and problems
/// only, so the terminal stays readable.
pub(crate) const DEFAULT_LOG_FILTER: &str = "warn,access=info";

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Stop after this many seconds of traffic (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,

    /// Pods on 10.N.0.0/16 and the roles on 127.N.0.1; pick another N to run a second demo
    /// beside this one.
    #[arg(long, value_name = "N", default_value_t = 42,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    loopback_block: u8,

    /// Node proxies (and capture agents) to run; with 2, enrolled traffic crosses nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    nodes: u8,

    /// Scrape with Debian's real `prometheus` instead of the built-in scraper.
    #[arg(long)]
    with_prometheus: bool,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    ambit_localmesh::demo::run(&ambit_localmesh::demo::DemoOptions {
        duration: args.duration,
        loopback_block: args.loopback_block,
        nodes: args.nodes,
        with_prometheus: args.with_prometheus,
    })
}
