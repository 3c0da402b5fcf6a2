//! Mutual TLS for every qkdni reference point (rustls with the `aws-lc-rs` provider, which
//! offers and prefers the hybrid post-quantum key exchange X25519MLKEM768).
//!
//! Servers ask every client for a certificate signed by a trusted CA but also accept clients
//! without one, so that the application can answer with the protocol's own error (ETSI GS QKD
//! 014 wants `401` with a JSON body, not a failed handshake). The verified client identity
//! (certificate common name) reaches handlers as a [`PeerIdentity`] request extension.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Errors while loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading PEM file {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Paths of one party's TLS identity and its trust anchors.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    /// PEM certificate chain of this party.
    pub cert: PathBuf,
    /// PEM private key of this party.
    pub key: PathBuf,
    /// PEM CA certificates this party trusts for its peers.
    pub ca: Vec<PathBuf>,
    /// CAs of other QKDNs trusted at this party's interworking reference points (Qx, Kxi,
    /// Cxi, Mxi). A peer certified by one of them is known as `name@domain`, so it can never
    /// pass for a party of this domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_cas: Vec<PeerCa>,
}

/// The CA of another QKDN.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerCa {
    /// The other QKDN's name.
    pub domain: String,
    /// Its CA certificate (PEM path).
    pub cert: PathBuf,
}

impl TlsFiles {
    fn all_cas(&self) -> Vec<PathBuf> {
        let mut cas = self.ca.clone();
        cas.extend(self.peer_cas.iter().map(|p| p.cert.clone()));
        cas
    }
}

/// The identity of a party of QKDN `domain` named `name`, as peers of another QKDN see it.
pub fn foreign_identity(name: &str, domain: &str) -> String {
    format!("{name}@{domain}")
}

/// The identity a client proved with its certificate, if it presented one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<String>);

/// The key exchange groups every qkdni TLS client offers and server accepts, most preferred
/// first: the hybrid post-quantum X25519MLKEM768 (ML-KEM-768 with X25519, TLS 1.3 only),
/// then the classic groups, so that a peer without ML-KEM still connects. A rustls client
/// sends key shares for X25519MLKEM768 and X25519 in its first hello, so neither kind of
/// server costs a retry; a rustls server takes the first group of the client's list that
/// it supports.
pub static KX_GROUPS: &[&dyn rustls::crypto::SupportedKxGroup] = &[
    rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
    rustls::crypto::aws_lc_rs::kx_group::X25519,
    rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
    rustls::crypto::aws_lc_rs::kx_group::SECP384R1,
];

/// The crypto provider of every qkdni TLS endpoint: aws-lc-rs with [`KX_GROUPS`] in that
/// order (stated here rather than left to the provider's default, which depends on its
/// `prefer-post-quantum` feature).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: KX_GROUPS.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// The name of a negotiated key exchange group as logs and metrics show it
/// (`X25519MLKEM768`, `X25519`, ...).
pub fn group_name(group: Option<&'static dyn rustls::crypto::SupportedKxGroup>) -> String {
    match group {
        Some(group) => format!("{:?}", group.name()),
        None => "none".to_owned(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            reason: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.into(),
            reason: "no certificate".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.into(),
        reason: e.to_string(),
    })
}

fn roots(cas: &[PathBuf]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for ca in cas {
        for cert in load_certs(ca)? {
            store.add(cert)?;
        }
    }
    Ok(store)
}

/// A server configuration that requests (but does not require) client certificates.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&files.all_cas())?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration presenting `files.cert` and trusting `files.ca` (this domain's
/// servers only: another domain's CA cannot certify a server for this domain).
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    client_config_trusting(files, &files.ca)
}

fn client_config_trusting(files: &TlsFiles, cas: &[PathBuf]) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(cas)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?)
}

/// An HTTPS client with mutual TLS.
pub fn https_client(
    files: &TlsFiles,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(client_config(files)?)
        .timeout(timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()?)
}

/// An HTTPS client with mutual TLS toward the servers of other QKDN `domain` (trusting its
/// CA from `files.peer_cas` only).
pub fn https_client_to_peer(
    files: &TlsFiles,
    domain: &str,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    let cas: Vec<PathBuf> = files
        .peer_cas
        .iter()
        .filter(|p| p.domain == domain)
        .map(|p| p.cert.clone())
        .collect();
    if cas.is_empty() {
        return Err(TlsError::Verifier(format!(
            "no CA of domain {domain} in peer_cas"
        )));
    }
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(client_config_trusting(files, &cas)?)
        .timeout(timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()?)
}

/// An HTTPS client that trusts `ca` and presents no client certificate.
pub fn https_client_trusting(
    ca: &[PathBuf],
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .build()?)
}

/// The common name of the first certificate of a verified chain.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Verifiers of this domain's CAs and of each other QKDN's CA, to tell whose certificate a
/// client presented: the domain is the one whose trust anchors the chain verifies against,
/// never a name in the certificate (an intermediate CA under another domain's root cannot
/// make a certificate look local).
#[derive(Clone, Default)]
pub struct Issuers(Arc<Vec<(Option<String>, Verifier)>>);

/// A client certificate verifier of one set of trust anchors.
type Verifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

impl Issuers {
    /// The verifiers of `files`: its own CAs first, then each peer CA.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let verifier = |cas: &[PathBuf]| -> Result<_, TlsError> {
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(cas)?), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))
        };
        let mut all = vec![(None, verifier(&files.ca)?)];
        for peer in &files.peer_cas {
            all.push((
                Some(peer.domain.clone()),
                verifier(std::slice::from_ref(&peer.cert))?,
            ));
        }
        Ok(Self(Arc::new(all)))
    }

    /// The identity of a client certificate chain (already verified by the handshake): its
    /// common name, qualified with the domain when another QKDN's CA anchors it.
    pub fn identity(&self, chain: &[CertificateDer<'_>]) -> Option<String> {
        let (leaf, intermediates) = chain.split_first()?;
        let cn = common_name(leaf)?;
        let now = rustls::pki_types::UnixTime::now();
        let (domain, _) = self
            .0
            .iter()
            .find(|(_, v)| v.verify_client_cert(leaf, intermediates, now).is_ok())?;
        Some(match domain {
            Some(domain) => foreign_identity(&cn, domain),
            None => cn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    fn signed(
        name: &str,
        is_ca: bool,
        issuer: &rcgen::Certificate,
        issuer_key: &KeyPair,
    ) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        } else {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, issuer, issuer_key).unwrap(), key)
    }

    #[test]
    fn the_trust_anchor_decides_the_domain_not_the_names() {
        let dir = std::env::temp_dir().join(format!("qkdni-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_a, key_a) = ca("A CA");
        let (ca_b, key_b) = ca("B CA");
        let (ca_c, key_c) = ca("C CA");
        for (name, cert) in [("a", &ca_a), ("b", &ca_b)] {
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        }
        let files = TlsFiles {
            cert: dir.join("unused.crt"),
            key: dir.join("unused.key"),
            ca: vec![dir.join("a.crt")],
            peer_cas: vec![PeerCa {
                domain: "B".into(),
                cert: dir.join("b.crt"),
            }],
        };
        let issuers = Issuers::load(&files).unwrap();
        let der = |c: &rcgen::Certificate| c.der().clone();
        // issued by A: a party of this domain
        let (leaf, _) = signed("sae-a1-1", false, &ca_a, &key_a);
        assert_eq!(issuers.identity(&[der(&leaf)]).as_deref(), Some("sae-a1-1"));
        // issued by B, directly or through an intermediate CA of B that takes A's CA name:
        // always a party of B
        let (leaf, _) = signed("sae-a1-1", false, &ca_b, &key_b);
        assert_eq!(
            issuers.identity(&[der(&leaf)]).as_deref(),
            Some("sae-a1-1@B")
        );
        let (intermediate, key_i) = signed("A CA", true, &ca_b, &key_b);
        let (leaf, _) = signed("sae-a1-1", false, &intermediate, &key_i);
        assert_eq!(
            issuers
                .identity(&[der(&leaf), der(&intermediate)])
                .as_deref(),
            Some("sae-a1-1@B")
        );
        // issued by a CA nobody trusts: nobody
        let (leaf, _) = signed("sae-a1-1", false, &ca_c, &key_c);
        assert_eq!(issuers.identity(&[der(&leaf)]), None);
        assert_eq!(Issuers::default().identity(&[der(&leaf)]), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
