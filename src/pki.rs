//! Certificates for emulated domains: one CA per domain, a server+client certificate per
//! key manager, a client certificate per SAE and per operator.
//!
//! Identities are carried in the certificate's common name (CN): the node id for a KM, the
//! SAE id for an SAE, the operator name for an operator. Every certificate also names
//! `127.0.0.1` and `localhost` so that any TLS client verifies loopback servers, and may name
//! more IP addresses (a `--netns` testbed's node and root addresses).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Errors while making or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server that also authenticates as a client to its peers (KM, controller).
    Node,
    /// A client only (SAE, operator).
    Client,
}

/// A certificate authority that signs the certificates of one domain.
pub struct Authority {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

/// PEM paths of one issued certificate.
#[derive(Debug, Clone)]
pub struct IssuedPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Authority {
    /// Creates a new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} CA"));
        dn.push(DnType::OrganizationName, "qkdni");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.clone().self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `common_name`, returning (cert PEM, key PEM).
    pub fn issue(&self, common_name: &str, role: Role) -> Result<(String, String), PkiError> {
        self.issue_with_ips(common_name, role, &[])
    }

    /// Issues a certificate for `common_name` that also names the IP addresses `ips` (besides
    /// `127.0.0.1` and `localhost`), returning (cert PEM, key PEM).
    pub fn issue_with_ips(
        &self,
        common_name: &str,
        role: Role,
        ips: &[IpAddr],
    ) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        for ip in ips {
            if *ip != IpAddr::V4(Ipv4Addr::LOCALHOST) {
                params.subject_alt_names.push(SanType::IpAddress(*ip));
            }
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "qkdni");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match role {
            Role::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let key = KeyPair::generate()?;
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a certificate and writes `<dir>/<file_stem>.crt` and `.key`.
    pub fn issue_to(
        &self,
        dir: &Path,
        file_stem: &str,
        common_name: &str,
        role: Role,
    ) -> Result<IssuedPaths, PkiError> {
        self.issue_to_with_ips(dir, file_stem, common_name, role, &[])
    }

    /// [`issue_to`](Self::issue_to) for a certificate that also names the IP addresses `ips`.
    pub fn issue_to_with_ips(
        &self,
        dir: &Path,
        file_stem: &str,
        common_name: &str,
        role: Role,
        ips: &[IpAddr],
    ) -> Result<IssuedPaths, PkiError> {
        let (cert, key) = self.issue_with_ips(common_name, role, ips)?;
        let paths = IssuedPaths {
            cert: dir.join(format!("{file_stem}.crt")),
            key: dir.join(format!("{file_stem}.key")),
        };
        write(&paths.cert, cert.as_bytes())?;
        write(&paths.key, key.as_bytes())?;
        Ok(paths)
    }
}

fn write(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    std::fs::write(path, data).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    #[test]
    fn certificates_name_loopback_and_the_extra_ips() {
        let ca = Authority::new("test").unwrap();
        let node = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        let (pem, _) = ca
            .issue_with_ips("km-x", Role::Node, &[node, IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let ips: Vec<&[u8]> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::IPAddress(bytes) => Some(*bytes),
                _ => None,
            })
            .collect();
        assert_eq!(ips, [&[127, 0, 0, 1][..], &[198, 18, 0, 2][..]]);
    }
}
