//! Mutual TLS for every qkdni reference point (rustls with the `ring` provider).
//!
//! Servers ask every client for a certificate signed by a trusted CA but also accept clients
//! without one, so that the application can answer with the protocol's own error (ETSI GS QKD
//! 014 wants `401` with a JSON body, not a failed handshake). The verified client identity
//! (certificate common name) reaches handlers as a [`PeerIdentity`] request extension.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

/// A client configuration presenting `files.cert` and trusting `files.ca`.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&files.all_cas())?)
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

/// Serves `router` over HTTPS on `listener` until the task is dropped. Each request carries
/// the client's [`PeerIdentity`].
pub async fn serve_https(listener: TcpListener, config: Arc<ServerConfig>, router: Router) {
    serve_https_with(listener, config, Issuers::default(), router).await
}

/// The subject names of other QKDNs' CAs, to tell their certificates from this domain's.
#[derive(Clone, Default)]
pub struct Issuers(Arc<Vec<(Vec<u8>, String)>>);

impl Issuers {
    /// Reads the peer CAs of `files`.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let mut subjects = Vec::new();
        for peer in &files.peer_cas {
            for cert in load_certs(&peer.cert)? {
                let (_, parsed) =
                    x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
                        TlsError::Pem {
                            path: peer.cert.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                subjects.push((parsed.subject().as_raw().to_vec(), peer.domain.clone()));
            }
        }
        Ok(Self(Arc::new(subjects)))
    }

    /// The identity of a verified client certificate: its common name, qualified with the
    /// domain when another QKDN's CA issued it.
    pub fn identity(&self, cert: &CertificateDer<'_>) -> Option<String> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
        let issuer = parsed.issuer().as_raw();
        match self.0.iter().find(|(subject, _)| subject == issuer) {
            Some((_, domain)) => Some(foreign_identity(cn, domain)),
            None => Some(cn.to_owned()),
        }
    }
}

/// [`serve_https`] for a server that trusts other QKDNs' CAs (`issuers`).
pub async fn serve_https_with(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    issuers: Issuers,
    router: Router,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let issuers = issuers.clone();
        tokio::spawn(async move { serve_connection(acceptor, tcp, remote, issuers, router).await });
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    issuers: Issuers,
    router: Router,
) {
    let handshake =
        tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%remote, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    let identity = PeerIdentity(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| issuers.identity(cert)),
    );
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(identity.clone());
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(remote));
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let result = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(error) = result {
        tracing::debug!(%remote, %error, "connection ended with error");
    }
}
