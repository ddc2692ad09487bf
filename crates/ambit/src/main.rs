//! `ambit`: one binary for every role of the mesh and the CLI (see the `ambit_cli` library).

fn main() -> std::process::ExitCode {
    ambit_cli::ambit_main()
}
