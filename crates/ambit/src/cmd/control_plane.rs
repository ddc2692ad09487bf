//! The flags that reach the control plane, shared by the roles that follow its WDS (`ambit node`
//! and `ambit cni`). Names, variables and defaults are ztunnel's, so Istio's charts set them.

use std::path::PathBuf;

use ambit_identity::{ControlPlaneEndpoint, ControlPlaneTls};
use ambit_proto::ports;
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ControlPlaneArgs {
    /// Control plane WDS address (`host:port`).
    #[arg(
        long,
        env = "XDS_ADDRESS",
        default_value_t = format!("istiod.istio-system.svc:{}", ports::XDS_TLS)
    )]
    pub(crate) xds_address: String,

    /// Speak plaintext to the WDS address (a control plane's loopback port 15010).
    #[arg(long)]
    pub(crate) xds_plaintext: bool,

    /// Bearer token presented to the control plane (re-read on every use).
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    token_file: PathBuf,

    /// Mesh root certificate, to verify the control plane's TLS certificate.
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    root_cert: PathBuf,

    /// TLS name of the control plane; defaults to the host part of the address.
    #[arg(long)]
    server_name: Option<String>,
}

impl ControlPlaneArgs {
    /// The control plane's WDS at `--xds-address`.
    pub(crate) fn wds(&self) -> ControlPlaneEndpoint {
        self.endpoint(&self.xds_address)
    }

    /// The control plane at `addr`: plaintext with `--xds-plaintext`; otherwise TLS for
    /// `--server-name` (by default the host part of `addr`) checked against `--root-cert`, with
    /// the token in `--token-file`.
    pub(crate) fn endpoint(&self, addr: &str) -> ControlPlaneEndpoint {
        if self.xds_plaintext {
            return ControlPlaneEndpoint::plaintext(addr);
        }
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        ControlPlaneEndpoint::tls(
            addr,
            ControlPlaneTls {
                server_name: self.server_name.clone().unwrap_or_else(|| host.to_owned()),
                root_cert_file: self.root_cert.clone(),
                token_file: self.token_file.clone(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        control_plane: ControlPlaneArgs,
    }

    fn parse(args: &[&str]) -> ControlPlaneArgs {
        Cli::try_parse_from(std::iter::once("ambit").chain(args.iter().copied()))
            .unwrap()
            .control_plane
    }

    #[test]
    fn by_default_wds_is_istiod_over_tls_named_by_its_host_with_istios_files() {
        let wds = parse(&[]).wds();
        assert_eq!(wds.addr, "istiod.istio-system.svc:15012");
        let tls = wds.tls.unwrap();
        assert_eq!(tls.server_name, "istiod.istio-system.svc");
        assert_eq!(
            tls.root_cert_file,
            Path::new("/var/run/secrets/istio/root-cert.pem")
        );
        assert_eq!(
            tls.token_file,
            Path::new("/var/run/secrets/tokens/istio-token")
        );
    }

    #[test]
    fn flags_override_the_name_and_files_and_plaintext_drops_tls() {
        let args = parse(&[
            "--xds-address",
            "10.0.0.1:15012",
            "--server-name",
            "istiod.example",
            "--root-cert",
            "/r.pem",
            "--token-file",
            "/t",
        ]);
        let ca = args.endpoint("10.0.0.2:15012");
        assert_eq!(ca.addr, "10.0.0.2:15012");
        let tls = ca.tls.unwrap();
        assert_eq!(tls.server_name, "istiod.example");
        assert_eq!(tls.root_cert_file, Path::new("/r.pem"));
        assert_eq!(tls.token_file, Path::new("/t"));

        let plaintext = parse(&["--xds-address", "127.0.0.1:15010", "--xds-plaintext"]).wds();
        assert_eq!(plaintext.addr, "127.0.0.1:15010");
        assert!(plaintext.tls.is_none());
    }
}
