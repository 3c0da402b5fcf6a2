//! COSE_Sign1 (RFC 9052) signatures of interworking messages, with a detached payload: the
//! exact bytes of the HTTP body.
//!
//! Protected header (all of it covered by the signature):
//! - `alg` (1): ES256 (ECDSA P-256 with SHA-256) or ES384, the curve of the signer's TLS key;
//! - `content type` (3): `application/json`;
//! - `kid` (4): SHA-256 of the signer's certificate (DER);
//! - `x5chain` (33, RFC 9360): the signer's certificate chain, DER, leaf first;
//! - CWT claims (15, RFC 9597) with `iat` (6): when it was signed (seconds since the epoch);
//! - `"qkdni-msg"`: what is signed, `"POST /cxi/v1/transactions/<id>/commit"` for a request,
//!   `"answer 200 POST /cxi/v1/transactions/<id>/commit"` for its answer, so that a body-less
//!   request (a commit) and an answer are bound to their transaction and to their role;
//! - `"qkdni-re"` (answers only): SHA-256 of the COSE_Sign1 of the request answered.
//!
//! No external AAD. The signing key is the private key of the party's TLS certificate (issued
//! by its domain's CA): the signature proves which party of which domain said what, to anyone
//! holding that domain's CA certificate.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use coset::cbor::value::Value;
use coset::{iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, Label};
use rustls::pki_types::{pem::PemObject, PrivateKeyDer};

use super::trust::{pem_certs, Trust};
use super::NrError;
use crate::tls::TlsFiles;

/// Header label of the signed message line.
pub const MSG_LABEL: &str = "qkdni-msg";
/// Header label of the digest of the request an answer answers.
pub const RE_LABEL: &str = "qkdni-re";
/// CWT claims header parameter (RFC 9597).
const CWT_CLAIMS: i64 = 15;
/// CWT claim `iat`.
const CWT_IAT: i64 = 6;
/// Content type of every signed body.
pub const CONTENT_TYPE: &str = "application/json";

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// A party's signing key and certificate chain.
pub struct Signer {
    key: EcdsaKeyPair,
    alg: iana::Algorithm,
    chain: Vec<Vec<u8>>,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("alg", &self.alg).finish()
    }
}

impl Signer {
    /// The signer of a TLS identity (`files.cert`, `files.key`).
    pub fn of(files: &TlsFiles) -> Result<Self, NrError> {
        Self::load(&files.cert, &files.key)
    }

    /// The signer whose chain is PEM file `cert` and key PEM file `key` (PKCS#8 or SEC1,
    /// ECDSA P-256 or P-384).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, NrError> {
        let chain = pem_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| NrError::Key(format!("{}: {e}", key.display())))?;
        Self::new(chain, &key)
    }

    /// A signer of `chain` (DER, leaf first) with key `key`.
    pub fn new(chain: Vec<Vec<u8>>, key: &PrivateKeyDer<'_>) -> Result<Self, NrError> {
        let candidates = [
            (
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                iana::Algorithm::ES256,
            ),
            (
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                iana::Algorithm::ES384,
            ),
        ];
        let (key, alg) = candidates
            .iter()
            .find_map(|(alg, cose)| {
                let pair = match key {
                    PrivateKeyDer::Pkcs8(der) => {
                        EcdsaKeyPair::from_pkcs8(alg, der.secret_pkcs8_der()).ok()
                    }
                    PrivateKeyDer::Sec1(der) => {
                        EcdsaKeyPair::from_private_key_der(alg, der.secret_sec1_der()).ok()
                    }
                    _ => None,
                };
                pair.map(|p| (p, *cose))
            })
            .ok_or_else(|| NrError::Key("the TLS key is not an ECDSA P-256 or P-384 key".into()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| NrError::Key("no certificate".into()))?;
        if public_key(leaf)? != key.public_key().as_ref() {
            return Err(NrError::Key(
                "the key does not belong to the certificate".into(),
            ));
        }
        Ok(Self {
            key,
            alg,
            chain,
            rng: aws_lc_rs::rand::SystemRandom::new(),
        })
    }

    /// The certificate chain (DER, leaf first).
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// A COSE_Sign1 (tagged CBOR) over `body`, signing message line `msg`, answering the
    /// request whose COSE_Sign1 has digest `re` if any.
    pub fn sign(&self, body: &[u8], msg: &str, re: Option<&[u8]>) -> Result<Vec<u8>, NrError> {
        let iat = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let chain = if self.chain.len() == 1 {
            Value::Bytes(self.chain[0].clone())
        } else {
            Value::Array(self.chain.iter().cloned().map(Value::Bytes).collect())
        };
        let mut header = HeaderBuilder::new()
            .algorithm(self.alg)
            .content_type(CONTENT_TYPE.into())
            .key_id(sha256(&self.chain[0]))
            .value(iana::HeaderParameter::X5Chain as i64, chain)
            .value(
                CWT_CLAIMS,
                Value::Map(vec![(Value::from(CWT_IAT), Value::from(iat))]),
            )
            .text_value(MSG_LABEL.into(), Value::Text(msg.into()));
        if let Some(re) = re {
            header = header.text_value(RE_LABEL.into(), Value::Bytes(re.to_vec()));
        }
        let sign1 = CoseSign1Builder::new()
            .protected(header.build())
            .try_create_detached_signature(body, b"", |data| {
                self.key
                    .sign(&self.rng, data)
                    .map(|s| s.as_ref().to_vec())
                    .map_err(|_| NrError::Key("signing failed".into()))
            })?
            .build();
        use coset::TaggedCborSerializable;
        sign1
            .to_tagged_vec()
            .map_err(|e| NrError::Malformed(e.to_string()))
    }
}

/// The public key (uncompressed EC point) of certificate `der`.
fn public_key(der: &[u8]) -> Result<Vec<u8>, NrError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| NrError::Malformed(format!("certificate: {e}")))?;
    Ok(cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .to_vec())
}

/// A verified signature: who signed what, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signer's identity (`name`, or `name@domain` for a peer domain's party).
    pub signer: String,
    /// The signed message line.
    pub msg: String,
    /// When it was signed (seconds since the epoch).
    pub iat: u64,
    /// The digest of the answered request, for an answer.
    pub re: Option<Vec<u8>>,
    /// The signer's certificate chain (DER, leaf first).
    pub chain: Vec<Vec<u8>>,
}

/// What a COSE_Sign1 says in its protected header (not yet verified).
struct Parsed {
    sign1: CoseSign1,
    alg: iana::Algorithm,
    chain: Vec<Vec<u8>>,
    msg: String,
    iat: u64,
    re: Option<Vec<u8>>,
}

fn parse(cose: &[u8]) -> Result<Parsed, NrError> {
    use coset::TaggedCborSerializable;
    let malformed = |what: &str| NrError::Malformed(what.into());
    let sign1 = CoseSign1::from_tagged_slice(cose)
        .or_else(|_| CoseSign1::from_slice(cose))
        .map_err(|e| NrError::Malformed(format!("not a COSE_Sign1: {e}")))?;
    if sign1.payload.is_some() {
        return Err(malformed("the payload must be detached"));
    }
    let header = &sign1.protected.header;
    let alg = match &header.alg {
        Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)) => iana::Algorithm::ES256,
        Some(coset::Algorithm::Assigned(iana::Algorithm::ES384)) => iana::Algorithm::ES384,
        other => return Err(NrError::Malformed(format!("algorithm {other:?}"))),
    };
    let find = |label: Label| {
        header
            .rest
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, v)| v)
    };
    let chain = match find(Label::Int(iana::HeaderParameter::X5Chain as i64)) {
        Some(Value::Bytes(der)) => vec![der.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::Bytes(der) => Ok(der.clone()),
                _ => Err(malformed("x5chain holds a non-bstr")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(malformed("no x5chain in the protected header")),
    };
    let msg = match find(Label::Text(MSG_LABEL.into())) {
        Some(Value::Text(msg)) => msg.clone(),
        _ => return Err(malformed("no qkdni-msg in the protected header")),
    };
    let iat = match find(Label::Int(CWT_CLAIMS)) {
        Some(Value::Map(claims)) => claims
            .iter()
            .find(|(k, _)| *k == Value::from(CWT_IAT))
            .and_then(|(_, v)| v.as_integer())
            .and_then(|i| u64::try_from(i).ok()),
        _ => None,
    }
    .ok_or_else(|| malformed("no iat claim in the protected header"))?;
    let re = match find(Label::Text(RE_LABEL.into())) {
        Some(Value::Bytes(re)) => Some(re.clone()),
        None => None,
        _ => return Err(malformed("qkdni-re is not a bstr")),
    };
    Ok(Parsed {
        sign1,
        alg,
        chain,
        msg,
        iat,
        re,
    })
}

/// Verifies COSE_Sign1 `cose` over `body`: the signature with the key of the leaf of its
/// `x5chain`, and the chain against `trust` at the signing time. Says who signed, not
/// whether that party may: callers compare [`Verified::signer`] with the party they talk to.
pub fn verify(cose: &[u8], body: &[u8], trust: &Trust) -> Result<Verified, NrError> {
    let parsed = parse(cose)?;
    let leaf = parsed
        .chain
        .first()
        .ok_or_else(|| NrError::Malformed("empty x5chain".into()))?;
    let alg: &dyn signature::VerificationAlgorithm = match parsed.alg {
        iana::Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        _ => &signature::ECDSA_P256_SHA256_FIXED,
    };
    let key = signature::UnparsedPublicKey::new(alg, public_key(leaf)?);
    parsed
        .sign1
        .verify_detached_signature(body, b"", |sig, data| key.verify(data, sig))
        .map_err(|_| NrError::BadSignature)?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(parsed.iat);
    let signer = trust.identity(&parsed.chain, at)?;
    Ok(Verified {
        signer,
        msg: parsed.msg,
        iat: parsed.iat,
        re: parsed.re,
        chain: parsed.chain,
    })
}

/// When a COSE_Sign1 says it was signed (unverified), for reports.
pub fn signed_time(cose: &[u8]) -> Result<u64, NrError> {
    Ok(parse(cose)?.iat)
}
