//! Reading and writing Istio's plug-in CA files.
//!
//! Writing never replaces a file (`O_CREAT|O_EXCL`), and the key file is created with mode 0600
//! by the `open(2)` call itself, so it is never world-readable, not even between create and
//! chmod.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{CaError, CaPem};

/// The signing certificate (a root or an intermediate).
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The signing certificate's private key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The root certificate(s) of the mesh.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The signing certificate and intermediates up to the root (optional when reading).
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

const ALL_FILES: [&str; 4] = [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE];
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// The content of a plug-in CA directory or Secret, decoded from PEM but not yet validated.
pub(super) struct PluginFiles {
    /// Where the material came from; errors name `<origin>/<file>`.
    pub(super) dir: PathBuf,
    pub(super) ca_cert: Vec<CertificateDer<'static>>,
    pub(super) ca_key: PrivateKeyDer<'static>,
    pub(super) roots: Vec<CertificateDer<'static>>,
    pub(super) cert_chain: Option<Vec<CertificateDer<'static>>>,
}

/// Reads the plug-in files of `dir`. Each file is read and decoded before the next one, so an
/// error names the first file at fault (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, then the
/// optional `cert-chain.pem`).
pub(super) fn read_pem(dir: &Path) -> Result<CaPem, CaError> {
    let certs = |name: &str| -> Result<Vec<u8>, CaError> {
        let path = dir.join(name);
        let bytes = read_file(&path)?;
        decode_certs(&path, &bytes)?;
        Ok(bytes)
    };
    let ca_cert = certs(CA_CERT_FILE)?;
    let key_path = dir.join(CA_KEY_FILE);
    if let Ok(meta) = fs::metadata(&key_path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %key_path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "CA key is readable by other users");
    }
    let ca_key = read_file(&key_path)?;
    decode_key(&key_path, &ca_key)?;
    let root_cert = certs(ROOT_CERT_FILE)?;
    let chain_path = dir.join(CERT_CHAIN_FILE);
    let cert_chain = match fs::metadata(&chain_path) {
        Ok(_) => Some(certs(CERT_CHAIN_FILE)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(CaError::Io {
                action: "read",
                path: chain_path,
                source,
            });
        }
    };
    Ok(CaPem {
        origin: dir.to_owned(),
        ca_cert,
        ca_key,
        root_cert,
        cert_chain,
    })
}

/// Decodes the PEM of each part (validation comes after, in `load`).
pub(super) fn decode(pem: &CaPem) -> Result<PluginFiles, CaError> {
    let dir = pem.origin.as_path();
    Ok(PluginFiles {
        dir: dir.to_owned(),
        ca_cert: decode_certs(&dir.join(CA_CERT_FILE), &pem.ca_cert)?,
        ca_key: decode_key(&dir.join(CA_KEY_FILE), &pem.ca_key)?,
        roots: decode_certs(&dir.join(ROOT_CERT_FILE), &pem.root_cert)?,
        cert_chain: match &pem.cert_chain {
            Some(bytes) => Some(decode_certs(&dir.join(CERT_CHAIN_FILE), bytes)?),
            None => None,
        },
    })
}

/// Whether `dir` holds the signing certificate or key (so a first start must not create one).
pub(super) fn any_present(dir: &Path) -> bool {
    [CA_CERT_FILE, CA_KEY_FILE]
        .iter()
        .any(|f| fs::symlink_metadata(dir.join(f)).is_ok())
}

/// Fails with [`CaError::AlreadyExists`] if any plug-in file is present in `dir`.
pub(super) fn ensure_absent(dir: &Path) -> Result<(), CaError> {
    for file in ALL_FILES {
        let path = dir.join(file);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(CaError::AlreadyExists { path });
        }
    }
    Ok(())
}

/// Creates `dir` if needed and writes each `(file name, content)` as a new file; the key file
/// with mode 0600, the others 0644. On failure, removes the files this call created.
pub(super) fn write_new(dir: &Path, files: &[(&str, &str)]) -> Result<(), CaError> {
    fs::create_dir_all(dir).map_err(|source| CaError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })?;
    let mut created = Vec::with_capacity(files.len());
    for (name, content) in files {
        let path = dir.join(name);
        let mode = if *name == CA_KEY_FILE {
            KEY_MODE
        } else {
            CERT_MODE
        };
        match write_file(&path, content.as_bytes(), mode) {
            Ok(()) => created.push(path),
            Err(err) => {
                for path in &created {
                    // Best effort: the error being returned is the one that matters.
                    let _ = fs::remove_file(path);
                }
                return Err(err);
            }
        }
    }
    Ok(())
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), CaError> {
    let io_err = |action| {
        move |source: io::Error| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                CaError::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                CaError::Io {
                    action,
                    path: path.to_owned(),
                    source,
                }
            }
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create"))?;
    // The umask can only have removed bits; set the exact mode so an odd umask cannot leave
    // the owner unable to read the key back.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io_err("set permissions on"))?;
    file.write_all(content).map_err(io_err("write"))?;
    file.sync_all().map_err(io_err("sync"))
}

fn decode_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CaError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CaError::MissingPem {
            path: path.to_owned(),
            what: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn decode_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, CaError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => CaError::MissingPem {
            path: path.to_owned(),
            what: "PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY",
        },
        source => CaError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| CaError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}
