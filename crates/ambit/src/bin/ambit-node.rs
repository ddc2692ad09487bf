//! `ambit-node`: the node proxy alone (`ambit node` in a binary of its own, with a fraction of
//! the code to map on every node).

fn main() -> std::process::ExitCode {
    ambit_cli::node_main()
}
