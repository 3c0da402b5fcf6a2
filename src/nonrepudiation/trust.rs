//! Whose certificate signed a message: the signer's chain (from the COSE `x5chain`) verified
//! against this domain's CA and each peer domain's CA, at the time the message was signed.
//!
//! The domain of a signer is the one whose trust anchor the chain verifies against, never a
//! name inside the certificate (as for TLS, [`crate::tls::Issuers`]); the identity has the
//! same form as a TLS peer identity (`name` for this domain, `name@domain` for another), so
//! the signer can be compared with the party at the other end of the connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{pem::PemObject, CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::NrError;
use crate::tls::{foreign_identity, TlsFiles};

/// The trust anchors signatures are verified against: `None` is this domain, `Some(d)` peer
/// domain `d`.
#[derive(Clone, Default)]
pub struct Trust(Arc<Vec<(Option<String>, Anchor)>>);

/// The verifier of one domain's CA certificates.
type Anchor = Arc<dyn ClientCertVerifier>;

/// CA certificates (DER) of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainCas {
    /// `None`: this domain.
    pub domain: Option<String>,
    /// The CA certificates, DER.
    pub certs: Vec<Vec<u8>>,
}

/// Reads every certificate of a PEM file.
pub fn pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, NrError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| NrError::Key(format!("{}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| NrError::Key(format!("{}: {e}", path.display())))?;
    Ok(certs.into_iter().map(|c| c.as_ref().to_vec()).collect())
}

/// The CAs named by `files`: its own, then each peer domain's.
pub fn cas_of(files: &TlsFiles) -> Result<Vec<DomainCas>, NrError> {
    let mut all = Vec::new();
    let read = |paths: &[PathBuf]| -> Result<Vec<Vec<u8>>, NrError> {
        let mut certs = Vec::new();
        for path in paths {
            certs.extend(pem_certs(path)?);
        }
        Ok(certs)
    };
    all.push(DomainCas {
        domain: None,
        certs: read(&files.ca)?,
    });
    for peer in &files.peer_cas {
        all.push(DomainCas {
            domain: Some(peer.domain.clone()),
            certs: read(std::slice::from_ref(&peer.cert))?,
        });
    }
    Ok(all)
}

impl Trust {
    /// Trust in `cas` (each domain's CAs).
    pub fn new(cas: &[DomainCas]) -> Result<Self, NrError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut all = Vec::new();
        for domain in cas {
            let mut roots = RootCertStore::empty();
            for der in &domain.certs {
                roots
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| NrError::Key(format!("CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                continue;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| NrError::Key(format!("CA certificate: {e}")))?;
            all.push((domain.domain.clone(), verifier));
        }
        Ok(Self(Arc::new(all)))
    }

    /// Trust in the CAs of `files`.
    pub fn of(files: &TlsFiles) -> Result<Self, NrError> {
        Self::new(&cas_of(files)?)
    }

    /// The identity of the party whose chain `chain` (leaf first, DER) is, valid at `at`:
    /// its certificate's common name, qualified with the domain when a peer CA anchors it.
    pub fn identity(&self, chain: &[Vec<u8>], at: SystemTime) -> Result<String, NrError> {
        let chain: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| NrError::Malformed("empty x5chain".into()))?;
        let cn = crate::tls::common_name(leaf).ok_or_else(|| {
            NrError::Untrusted("the signer certificate has no common name".into())
        })?;
        let now = UnixTime::since_unix_epoch(
            at.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
        );
        let mut last = None;
        for (domain, verifier) in self.0.iter() {
            match verifier.verify_client_cert(leaf, intermediates, now) {
                Ok(_) => {
                    return Ok(match domain {
                        Some(domain) => foreign_identity(&cn, domain),
                        None => cn,
                    })
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(NrError::Untrusted(format!(
            "certificate of {cn} chains to no trusted CA ({})",
            last.unwrap_or_else(|| "no CA".into())
        )))
    }
}
