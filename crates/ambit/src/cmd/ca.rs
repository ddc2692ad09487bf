//! `ambit ca`: create and inspect the files of the mesh certificate authority.
//!
//! The layout is Istio's plug-in CA layout (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
//! `cert-chain.pem`), so a directory made here can be loaded by `ambit control`, and one made for
//! istiod (`cacerts` secret) can be loaded by Ambit.

use std::path::PathBuf;

use ambit_identity::{CaConfig, CertificateAuthority, TrustDomain, inspect};
use anyhow::Context;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Create a new self-signed root CA in DIR (refuses to overwrite an existing one).
    Init {
        /// Directory for ca-cert.pem, ca-key.pem (mode 0600), root-cert.pem and cert-chain.pem.
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain of the mesh, as in `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: TrustDomain,
    },
    /// Print the certificates of a PEM file: SPIFFE id, issuer, validity and how the chain links.
    Inspect {
        /// A PEM file with one or more certificates (a leaf, a chain, or a root).
        file: PathBuf,
    },
}

pub(crate) fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, trust_domain } => {
            let config = CaConfig::new(trust_domain);
            let ca = CertificateAuthority::init(&dir, &config)
                .with_context(|| format!("cannot create a CA in {}", dir.display()))?;
            println!(
                "created a root CA for trust domain {} in {}",
                ca.trust_domain(),
                dir.display()
            );
            for file in [
                "ca-cert.pem",
                "ca-key.pem (mode 0600)",
                "root-cert.pem",
                "cert-chain.pem",
            ] {
                println!("  {}", dir.join(file).display());
            }
            Ok(())
        }
        CaCommand::Inspect { file } => {
            let pem =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let report = inspect::describe_pem(&pem)
                .with_context(|| format!("{} is not a usable certificate file", file.display()))?;
            print!("{report}");
            Ok(())
        }
    }
}
