//! Certificates for emulated domains: one CA per domain, a server+client certificate per
//! key manager, a client certificate per SAE and per operator.
//!
//! Every certificate passes `openssl verify -x509_strict` (RFC 5280 as strict clients such as
//! Python 3.13's default context apply it): the CA has a critical `basicConstraints` with
//! `cA`, `keyCertSign` and `cRLSign` and a Subject Key Identifier; every issued certificate
//! has an Authority Key Identifier (the CA's SKI), its own SKI, a critical `basicConstraints`
//! without `cA`, `digitalSignature` (the keys are ECDSA P-256: no key encipherment) and the
//! extended key usages of its [`Role`].
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
    /// A server that also authenticates as a client to its peers (KM, controller, manager):
    /// `serverAuth` and `clientAuth`.
    Node,
    /// A server only: `serverAuth`.
    Server,
    /// A client only (SAE, operator): `clientAuth`.
    Client,
}

impl Role {
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Role::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// A certificate authority that signs the certificates of one domain.
pub struct Authority {
    cert: rcgen::Certificate,
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
        // rcgen writes basicConstraints critical and a Subject Key Identifier for a CA
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert,
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
        // an end entity: basicConstraints cA=false (critical) and its own SKI
        params.is_ca = IsCa::ExplicitNoCa;
        // the CA's SKI, which strict verifiers need to pick the issuer
        params.use_authority_key_identifier_extension = true;
        // ECDSA keys sign (TLS 1.3 and ECDHE); they never encipher keys
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = role.extended_key_usages();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
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

    /// The extensions strict verifiers need, read back without any external tool.
    #[test]
    fn extensions_are_those_strict_verifiers_need() {
        use x509_parser::extensions::ParsedExtension;
        let parse = |pem: &str| {
            let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            pem.contents
        };
        let ca = Authority::new("strict").unwrap();
        let ca_der = parse(ca.cert_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let bc = ca_cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        let ku = ca_cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let ski = |cert: &x509_parser::certificate::X509Certificate| {
            cert.extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                    _ => None,
                })
                .expect("subject key identifier")
        };
        let ca_ski = ski(&ca_cert);
        for (role, server, client) in [
            (Role::Node, true, true),
            (Role::Server, true, false),
            (Role::Client, false, true),
        ] {
            let (pem, _) = ca.issue("x", role).unwrap();
            let der = parse(&pem);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            let aki = cert
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
                    _ => None,
                })
                .expect("authority key identifier");
            assert_eq!(aki.0, &ca_ski[..], "{role:?}: AKI is the CA's SKI");
            assert!(!ski(&cert).is_empty());
            let bc = cert.basic_constraints().unwrap().unwrap();
            assert!(bc.critical && !bc.value.ca, "{role:?}");
            let ku = cert.key_usage().unwrap().unwrap().value;
            assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert_eq!(
                (eku.server_auth, eku.client_auth),
                (server, client),
                "{role:?}"
            );
            assert!(cert.subject_alternative_name().unwrap().is_some());
        }
    }

    /// `openssl verify -x509_strict` accepts the CA and a certificate of every role for the
    /// purposes of the role, and refuses the purposes it does not have.
    #[test]
    fn every_role_passes_openssl_strict_verification_for_its_purposes() {
        let found = std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            // on CI the tool must be there; a developer's machine may lack it
            assert!(std::env::var_os("CI").is_none(), "CI must provide openssl");
            eprintln!("skipped: openssl not found");
            return;
        }
        let dir = std::env::temp_dir().join(format!("qkdni-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Authority::new("strict").unwrap();
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let verify = |cert: &Path, purpose: &str| {
            let output = std::process::Command::new("openssl")
                .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
                .arg(&ca_path)
                .arg(cert)
                .output()
                .unwrap();
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned()
                    + &String::from_utf8_lossy(&output.stderr),
            )
        };
        let (ok, out) = verify(&ca_path, "any");
        assert!(ok, "CA: {out}");
        for (role, good, bad) in [
            (Role::Node, &["sslserver", "sslclient"][..], &[][..]),
            (Role::Server, &["sslserver"][..], &["sslclient"][..]),
            (Role::Client, &["sslclient"][..], &["sslserver"][..]),
        ] {
            let paths = ca
                .issue_to(&dir, &format!("{role:?}"), &format!("{role:?}"), role)
                .unwrap();
            for purpose in good {
                let (ok, out) = verify(&paths.cert, purpose);
                assert!(ok, "{role:?} as {purpose}: {out}");
            }
            for purpose in bad {
                let (ok, out) = verify(&paths.cert, purpose);
                assert!(!ok, "{role:?} must not pass as {purpose}: {out}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
