//! Validating plug-in CA material before it may sign anything.
//!
//! Builds the path `ca-cert → cert-chain intermediates → a root of root-cert.pem` and checks
//! every link, every CA flag, every expiry and that `ca-key.pem` is the key of `ca-cert.pem`.
//! Errors name the file and certificate at fault.

use std::path::Path;
use std::time::SystemTime;

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use super::CaError;
use super::store::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, PluginFiles, ROOT_CERT_FILE};
use crate::x509;

/// What a CA needs from validated plug-in files.
pub(super) struct Material {
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub(super) signing_not_after: SystemTime,
    /// Certificates following an issued leaf: intermediates, then the anchoring root.
    pub(super) chain_tail: Vec<CertificateDer<'static>>,
}

pub(super) fn validate(files: &PluginFiles, now: SystemTime) -> Result<Material, CaError> {
    let dir = files.dir.as_path();
    let signing_der = files.ca_cert.first().ok_or_else(|| CaError::MissingPem {
        path: dir.join(CA_CERT_FILE),
        what: "CERTIFICATE",
    })?;
    if files.ca_cert.len() > 1 {
        tracing::warn!(
            "{CA_CERT_FILE} holds {} certificates; the first is the signing certificate",
            files.ca_cert.len()
        );
    }
    let signing = parse(dir, CA_CERT_FILE, 0, signing_der)?;
    let key = KeyPair::try_from(&files.ca_key).map_err(|e| CaError::UnsupportedSigningKey {
        path: dir.join(CA_KEY_FILE),
        detail: e.to_string(),
    })?;
    if x509::public_key_bits(&signing) != key.der_bytes() {
        return Err(CaError::KeyMismatch);
    }
    require_issuer(&signing, CA_CERT_FILE.to_owned())?;

    let roots = files
        .roots
        .iter()
        .enumerate()
        .map(|(i, der)| parse(dir, ROOT_CERT_FILE, i, der))
        .collect::<Result<Vec<_>, _>>()?;

    // The path from the signing cert up to (not including) a root.
    let mut path = vec![(CA_CERT_FILE.to_owned(), signing_der, signing)];
    for (i, der) in files.cert_chain.iter().flatten().enumerate() {
        if der == signing_der || files.roots.contains(der) {
            continue;
        }
        let which = format!("{CERT_CHAIN_FILE} certificate {i}");
        let cert = parse(dir, CERT_CHAIN_FILE, i, der)?;
        require_issuer(&cert, which.clone())?;
        path.push((which, der, cert));
    }
    for pair in path.windows(2) {
        let [(child_name, _, child), (parent_name, _, parent)] = pair else {
            continue;
        };
        if !x509::issued_by(child, parent) {
            return Err(CaError::ChainBroken {
                detail: format!("{child_name} is not issued by {parent_name}"),
            });
        }
    }

    let signing_is_root = files.roots.contains(signing_der) && path.len() == 1;
    let anchor = if signing_is_root {
        None
    } else {
        let (last_name, _, last) = path.last().ok_or_else(|| CaError::ChainBroken {
            detail: "empty chain".to_owned(),
        })?;
        let index = roots
            .iter()
            .position(|root| x509::issued_by(last, root))
            .ok_or_else(|| CaError::ChainBroken {
                detail: match files.cert_chain {
                    Some(_) => format!("{last_name} is not issued by any certificate in {ROOT_CERT_FILE}"),
                    None => format!("{last_name} is not issued by any certificate in {ROOT_CERT_FILE}, and there is no {CERT_CHAIN_FILE} naming intermediates"),
                },
            })?;
        let root = roots.get(index).zip(files.roots.get(index));
        let (root, root_der) = root.ok_or_else(|| CaError::ChainBroken {
            detail: "root index out of range".to_owned(),
        })?;
        require_issuer(root, format!("{ROOT_CERT_FILE} certificate {index}"))?;
        Some((
            format!("{ROOT_CERT_FILE} certificate {index}"),
            root_der,
            root,
        ))
    };

    let checked = path.iter().map(|(which, _, cert)| (which, cert));
    let anchor_checked = anchor.iter().map(|(which, _, cert)| (which, *cert));
    for (which, cert) in checked.chain(anchor_checked) {
        let not_after = x509::system_time(cert.validity().not_after);
        if not_after <= now {
            return Err(CaError::Expired {
                which: which.clone(),
                not_after: x509::rfc3339(not_after),
            });
        }
    }

    let (_, _, signing) = &path[0];
    let signing_not_after = x509::system_time(signing.validity().not_after);
    // rcgen rebuilds the issuer name from parsed attributes; it handles one attribute per RDN.
    let subject = signing.subject();
    if subject.iter().any(|rdn| rdn.iter().count() != 1) {
        return Err(CaError::UnsupportedCaSubject {
            subject: subject.to_string(),
        });
    }
    let issuer =
        Issuer::from_ca_cert_der(signing_der, key).map_err(|_| CaError::UnsupportedCaSubject {
            subject: subject.to_string(),
        })?;

    let mut chain_tail: Vec<CertificateDer<'static>> = Vec::with_capacity(path.len() + 1);
    match anchor {
        None => chain_tail.push(signing_der.clone()),
        Some((_, root_der, _)) => {
            chain_tail.extend(path.iter().map(|(_, der, _)| (*der).clone()));
            chain_tail.push(root_der.clone());
        }
    }
    Ok(Material {
        issuer,
        signing_not_after,
        chain_tail,
    })
}

fn parse<'a>(
    dir: &Path,
    file: &str,
    index: usize,
    der: &'a CertificateDer<'static>,
) -> Result<X509Certificate<'a>, CaError> {
    x509::parse(der).ok_or_else(|| CaError::BadCertificate {
        path: dir.join(file),
        index,
    })
}

fn require_issuer(cert: &X509Certificate<'_>, which: String) -> Result<(), CaError> {
    if x509::is_issuer(cert) {
        Ok(())
    } else {
        Err(CaError::NotCa {
            which,
            subject: cert.subject().to_string(),
        })
    }
}
