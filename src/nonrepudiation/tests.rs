//! Signing, verifying and keeping evidence, with real certificates of three CAs.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use tower::ServiceExt;

use super::http::{verify_and_sign, ServerPoint, HEADER};
use super::*;
use crate::pki::{Authority, Role};
use crate::tls::{PeerCa, PeerIdentity};

struct Pki {
    dir: PathBuf,
    a: Authority,
    b: Authority,
    c: Authority,
}

fn pki(name: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("qkdni-nr-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki {
        a: Authority::new("A").unwrap(),
        b: Authority::new("B").unwrap(),
        c: Authority::new("C").unwrap(),
        dir,
    };
    for (n, ca) in [("a", &pki.a), ("b", &pki.b), ("c", &pki.c)] {
        std::fs::write(pki.dir.join(format!("ca-{n}.crt")), ca.cert_pem()).unwrap();
    }
    pki
}

impl Pki {
    /// The TLS files of party `cn` issued by `ca` (`a`, `b`, `c`) of domain `domain`, which
    /// trusts the other of A and B as its peer.
    fn party(&self, ca: &str, cn: &str, domain: &str) -> TlsFiles {
        let authority = match ca {
            "a" => &self.a,
            "b" => &self.b,
            _ => &self.c,
        };
        let (cert, key) = authority.issue(cn, Role::Node).unwrap();
        let cert_path = self.dir.join(format!("{cn}-{ca}.crt"));
        let key_path = self.dir.join(format!("{cn}-{ca}.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let (own, peer, peer_domain) = if domain == "A" {
            ("a", "b", "B")
        } else {
            ("b", "a", "A")
        };
        TlsFiles {
            cert: cert_path,
            key: key_path,
            ca: vec![self.dir.join(format!("ca-{own}.crt"))],
            peer_cas: vec![PeerCa {
                domain: peer_domain.into(),
                cert: self.dir.join(format!("ca-{peer}.crt")),
            }],
        }
    }

    fn notary(&self, files: &TlsFiles, evidence: Option<&Path>) -> Notary {
        Notary::open(files, &Settings::default(), evidence).unwrap()
    }
}

const COMMIT: &str = "POST /cxi/v1/transactions/7c0c57a4-5a8e-4c39-9d59-8b7b1ab2d2b4/commit";

#[test]
fn a_signature_verifies_and_names_its_signer_and_domain() {
    let pki = pki("roundtrip");
    let ctl_a = Signer::of(&pki.party("a", "controller-A", "A")).unwrap();
    let b = pki.notary(&pki.party("b", "controller-B", "B"), None);
    let body = br#"{"version":1,"transaction":"x"}"#;
    let cose = ctl_a.sign(body, COMMIT, None).unwrap();
    let verified = b.check(&cose, body, "controller-A@A", COMMIT).unwrap();
    assert_eq!(verified.signer, "controller-A@A");
    assert_eq!(verified.msg, COMMIT);
    assert!(verified.re.is_none());
    // an empty body (a commit) is signed too: its message line binds the transaction
    let cose = ctl_a.sign(b"", COMMIT, Some(&[1; 32])).unwrap();
    let verified = b.check(&cose, b"", "controller-A@A", COMMIT).unwrap();
    assert_eq!(verified.re.as_deref(), Some(&[1u8; 32][..]));
}

#[test]
fn a_tampered_body_or_another_message_is_refused() {
    let pki = pki("tampered");
    let ctl_a = Signer::of(&pki.party("a", "controller-A", "A")).unwrap();
    let b = pki.notary(&pki.party("b", "controller-B", "B"), None);
    let body = br#"{"vote":"prepared"}"#.to_vec();
    let cose = ctl_a.sign(&body, COMMIT, None).unwrap();
    let mut tampered = body.clone();
    tampered[9] ^= 1;
    assert!(matches!(
        b.check(&cose, &tampered, "controller-A@A", COMMIT),
        Err(NrError::BadSignature)
    ));
    // a signature cut out of one message and pasted on another
    let other = COMMIT.replace("/commit", "/abort");
    assert!(matches!(
        b.check(&cose, &body, "controller-A@A", &other),
        Err(NrError::WrongMessage { .. })
    ));
    // a flipped bit of the signature
    let mut broken = cose.clone();
    let last = broken.len() - 1;
    broken[last] ^= 1;
    assert!(b.check(&broken, &body, "controller-A@A", COMMIT).is_err());
    assert!(matches!(
        b.check(b"not cbor", &body, "controller-A@A", COMMIT),
        Err(NrError::Malformed(_))
    ));
}

#[test]
fn a_key_that_is_not_the_certificates_does_not_verify() {
    use coset::cbor::value::Value;
    use coset::{iana, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
    let pki = pki("wrongkey");
    let genuine = pki.party("a", "controller-A", "A");
    let other = pki.party("a", "intruder", "A");
    // a signer refuses a key that is not its certificate's
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&other.key).unwrap();
    let chain = trust::pem_certs(&genuine.cert).unwrap();
    assert!(matches!(
        Signer::new(chain.clone(), &key),
        Err(NrError::Key(_))
    ));
    // a COSE_Sign1 naming controller-A's certificate, signed with another key of A
    assert!(
        Signer::of(&other).is_ok(),
        "the intruder's key signs for its own certificate"
    );
    let header = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .value(
            iana::HeaderParameter::X5Chain as i64,
            Value::Bytes(chain[0].clone()),
        )
        .value(
            15,
            Value::Map(vec![(Value::from(6), Value::from(1_900_000_000u64))]),
        )
        .text_value(cose::MSG_LABEL.into(), Value::Text(COMMIT.into()))
        .build();
    let pair = {
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_file(&other.key).unwrap();
        aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
        )
        .unwrap()
    };
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let forged = CoseSign1Builder::new()
        .protected(header)
        .create_detached_signature(b"{}", b"", |data| {
            pair.sign(&rng, data).unwrap().as_ref().to_vec()
        })
        .build();
    let b = pki.notary(&pki.party("b", "controller-B", "B"), None);
    let bytes = forged.to_tagged_vec().unwrap();
    assert!(matches!(
        b.check(&bytes, b"{}", "controller-A@A", COMMIT),
        Err(NrError::BadSignature)
    ));
}

#[test]
fn a_certificate_of_a_ca_nobody_trusts_is_refused() {
    let pki = pki("otherca");
    // C issues a certificate with the peer controller's very name
    let impostor = Signer::of(&pki.party("c", "controller-A", "A")).unwrap();
    let b = pki.notary(&pki.party("b", "controller-B", "B"), None);
    let cose = impostor.sign(b"{}", COMMIT, None).unwrap();
    assert!(matches!(
        b.check(&cose, b"{}", "controller-A@A", COMMIT),
        Err(NrError::Untrusted(_))
    ));
}

#[test]
fn a_signer_other_than_the_tls_peer_is_refused() {
    let pki = pki("mismatch");
    // a KM of A, certified by A's CA, signs what only A's controller may say
    let km = Signer::of(&pki.party("a", "a1", "A")).unwrap();
    let b = pki.notary(&pki.party("b", "controller-B", "B"), None);
    let cose = km.sign(b"{}", COMMIT, None).unwrap();
    match b.check(&cose, b"{}", "controller-A@A", COMMIT) {
        Err(NrError::SignerMismatch { signed, peer }) => {
            assert_eq!(signed, "a1@A");
            assert_eq!(peer, "controller-A@A");
        }
        other => panic!("{other:?}"),
    }
    // B's own party is not A's, whatever its name
    let own = Signer::of(&pki.party("b", "controller-A", "B")).unwrap();
    let cose = own.sign(b"{}", COMMIT, None).unwrap();
    assert!(matches!(
        b.check(&cose, b"{}", "controller-A@A", COMMIT),
        Err(NrError::SignerMismatch { .. })
    ));
}

fn classify(_: &axum::http::Method, path: &str, _: &[u8]) -> Option<String> {
    path.starts_with("/cxi/v1/transactions/")
        .then(|| format!("transaction {}", path.split('/').nth(4).unwrap_or_default()))
}

/// A server behind the middleware whose handler counts what reaches it.
fn server(notary: Arc<Notary>, reached: Arc<std::sync::atomic::AtomicUsize>) -> axum::Router {
    server_with(notary, reached, crate::nonrepudiation::http::never_lenient)
}

fn server_with(
    notary: Arc<Notary>,
    reached: Arc<std::sync::atomic::AtomicUsize>,
    lenient: crate::nonrepudiation::http::Lenient,
) -> axum::Router {
    let point = Arc::new(ServerPoint {
        notary,
        point: "cxi",
        classify,
        lenient,
        peer_of: Arc::new(|identity: &str| {
            identity.strip_prefix("controller-A@").map(str::to_owned)
        }),
        refuse: Arc::new(|status, kind, detail| {
            crate::problem::Problem::new(status, kind, detail).into_response()
        }),
    });
    axum::Router::new()
        .route(
            "/cxi/v1/transactions/{id}/commit",
            axum::routing::post({
                let reached = reached.clone();
                move || {
                    let reached = reached.clone();
                    async move {
                        reached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        axum::Json(serde_json::json!({"outcome": "committed"}))
                    }
                }
            }),
        )
        .route(
            "/cxi/v1/transactions/{id}/status",
            axum::routing::get(move || {
                let reached = reached.clone();
                async move {
                    reached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    axum::Json(serde_json::json!({"status": "delivered"}))
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(point, verify_and_sign))
}

fn request(signature: Option<Vec<u8>>) -> Request<Body> {
    let mut request = Request::post(COMMIT.strip_prefix("POST ").unwrap());
    if let Some(cose) = signature {
        request = request.header(HEADER, evidence::b64().encode(cose));
    }
    let mut request = request.body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(PeerIdentity(Some("controller-A@A".into())));
    request
}

use base64::Engine;

/// The 200 answer of B's controller to `method path`, its signature checked by `a`: what the
/// signature says of itself.
async fn signed_answer(
    a: &Notary,
    answer: axum::response::Response,
    method: axum::http::Method,
    path: &str,
) -> cose::Verified {
    assert_eq!(answer.status(), StatusCode::OK);
    let signature = answer.headers().get(HEADER).expect("signed").clone();
    let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .unwrap();
    let cose = evidence::b64().decode(signature.as_bytes()).unwrap();
    a.check(
        &cose,
        &body,
        "controller-B@B",
        &http::answer_line(200, &method, path),
    )
    .unwrap()
}

#[tokio::test]
async fn a_lenient_path_takes_unsigned_requests_and_signs_its_inline_acknowledgement() {
    let pki = pki("lenient");
    let b = Arc::new(pki.notary(
        &pki.party("b", "controller-B", "B"),
        Some(&pki.dir.join("evidence-b")),
    ));
    let a = pki.notary(&pki.party("a", "controller-A", "A"), None);
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = server_with(b.clone(), reached.clone(), |_, _| true);
    // unsigned (a third-party client of the standard): handled, its 200 answer signed by B
    let answer = app.clone().oneshot(request(None)).await.unwrap();
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1);
    let path = COMMIT.strip_prefix("POST ").unwrap();
    let verified = signed_answer(&a, answer, axum::http::Method::POST, path).await;
    assert!(verified.re.is_none(), "it answers no signed request");
    // a signature that does not verify is still refused: lenient is not blind
    let intruder = Signer::of(&pki.party("c", "controller-A", "A")).unwrap();
    let forged = intruder.sign(b"", COMMIT, None).unwrap();
    let answer = app.clone().oneshot(request(Some(forged))).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1);
    // a read (GET) the point classifies: signed by A, checked, answered and signed by B for it
    let path = "/cxi/v1/transactions/7c0c57a4-5a8e-4c39-9d59-8b7b1ab2d2b4/status";
    let line = http::request_line(&axum::http::Method::GET, path);
    let sent = Signer::of(&pki.party("a", "controller-A", "A"))
        .unwrap()
        .sign(b"", &line, None)
        .unwrap();
    let mut read = Request::get(path)
        .header(HEADER, evidence::b64().encode(&sent))
        .body(Body::empty())
        .unwrap();
    read.extensions_mut()
        .insert(PeerIdentity(Some("controller-A@A".into())));
    let answer = app.clone().oneshot(read).await.unwrap();
    let verified = signed_answer(&a, answer, axum::http::Method::GET, path).await;
    assert_eq!(verified.re.unwrap(), cose::sha256(&sent));
    // B kept what it signed
    let mut out = Vec::new();
    assert_eq!(
        report::verify(&pki.dir.join("evidence-b"), &mut out).unwrap(),
        0,
        "{}",
        String::from_utf8_lossy(&out)
    );
    let mut shown = Vec::new();
    report::show(&pki.dir.join("evidence-b"), &mut shown).unwrap();
    assert!(
        String::from_utf8(shown)
            .unwrap()
            .contains("answer to commit (200)"),
        "the inline answer is kept"
    );
}

#[tokio::test]
async fn the_server_step_refuses_before_the_handler_and_keeps_and_signs() {
    let pki = pki("server");
    let files_a = pki.party("a", "controller-A", "A");
    let a = pki.notary(&files_a, Some(&pki.dir.join("evidence-a")));
    let b = Arc::new(pki.notary(
        &pki.party("b", "controller-B", "B"),
        Some(&pki.dir.join("evidence-b")),
    ));
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = server(b.clone(), reached.clone());
    // unsigned, and signed by a key of a CA B does not trust: refused, nothing done
    let answer = app.clone().oneshot(request(None)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    let intruder = Signer::of(&pki.party("c", "controller-A", "A")).unwrap();
    let forged = intruder.sign(b"", COMMIT, None).unwrap();
    let answer = app.clone().oneshot(request(Some(forged))).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    // signed by A's controller: handled, answer signed by B's controller, both kept
    let line = COMMIT;
    let header = a
        .sign_and_keep("cxi", "transaction t", "B", line, b"", None)
        .await
        .unwrap()
        .unwrap();
    let sent = evidence::b64().decode(header.as_bytes()).unwrap();
    let answer = app
        .clone()
        .oneshot(request(Some(sent.clone())))
        .await
        .unwrap();
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1);
    let path = COMMIT.strip_prefix("POST ").unwrap();
    let verified = signed_answer(&a, answer, axum::http::Method::POST, path).await;
    assert_eq!(verified.re.unwrap(), cose::sha256(&sent));

    // B's store proves the exchange; report names both steps and signers
    let dir = pki.dir.join("evidence-b");
    let mut out = Vec::new();
    assert_eq!(
        report::verify(&dir, &mut out).unwrap(),
        0,
        "{}",
        String::from_utf8_lossy(&out)
    );
    let mut shown = Vec::new();
    report::show(&dir, &mut shown).unwrap();
    let shown = String::from_utf8(shown).unwrap();
    assert!(shown.contains("cxi peer A transaction 7c0c57a4"), "{shown}");
    assert!(shown.contains("commit by controller-A@A"), "{shown}");
    assert!(
        shown.contains("answer to commit (200) outcome=committed by controller-B"),
        "{shown}"
    );
    // one byte of a kept body changed: verify fails
    let file = dir.join(evidence::FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    let record: Record = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    let mut body = record.body_bytes().unwrap();
    body[2] ^= 1;
    let altered = Record {
        body: evidence::b64().encode(&body),
        ..record.clone()
    };
    let text = text.replacen(
        &serde_json::to_string(&record).unwrap(),
        &serde_json::to_string(&altered).unwrap(),
        1,
    );
    std::fs::write(&file, text).unwrap();
    let mut out = Vec::new();
    assert_eq!(report::verify(&dir, &mut out).unwrap(), 1);
    assert!(String::from_utf8_lossy(&out).contains("FAILED"));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn the_store_survives_reopening_and_a_torn_line() {
    let pki = pki("store");
    let files = pki.party("a", "controller-A", "A");
    let dir = pki.dir.join("evidence");
    let notary = pki.notary(&files, Some(&dir));
    notary
        .sign_and_keep("mxi", "report r1", "B", "POST /mxi/v1/reports", b"{}", None)
        .await
        .unwrap();
    drop(notary);
    // a crash in the middle of a line
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(evidence::FILE))
        .unwrap();
    file.write_all(b"{\"seq\":1,\"kept").unwrap();
    drop(file);
    let notary = pki.notary(&files, Some(&dir));
    notary
        .sign_and_keep("mxi", "report r2", "B", "POST /mxi/v1/reports", b"{}", None)
        .await
        .unwrap();
    let lines = evidence::read(&dir).unwrap();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2].as_ref().unwrap().seq, 2);
    let mut out = Vec::new();
    // the two records prove; the torn line is reported
    assert_eq!(report::verify(&dir, &mut out).unwrap(), 1);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.matches("ok mxi").count(), 2, "{out}");
    // the CA certificates were copied at first use
    assert_eq!(evidence::stored_cas(&dir).unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn full_evidence_files_are_closed_and_read_in_order() {
    let pki = pki("segments");
    let files = pki.party("a", "controller-A", "A");
    let dir = pki.dir.join("evidence");
    // a record is about 1 KB: a new file every two or three records
    let settings = Settings {
        segment_bytes: 2_000,
        ..Settings::default()
    };
    let keep = |notary: Notary, from: usize, to: usize| async move {
        for n in from..to {
            let agreement = format!("report r{n}");
            notary
                .sign_and_keep("mxi", &agreement, "B", "POST /mxi/v1/reports", b"{}", None)
                .await
                .unwrap();
        }
    };
    keep(Notary::open(&files, &settings, Some(&dir)).unwrap(), 0, 7).await;
    // reopened: numbering goes on after the closed files and the current one
    keep(Notary::open(&files, &settings, Some(&dir)).unwrap(), 7, 10).await;
    let closed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("evidence-"))
        .collect();
    assert!(closed.len() >= 3, "{closed:?}");
    assert!(std::fs::metadata(dir.join(evidence::FILE)).unwrap().len() < 2_000 + 2_000);
    let lines = evidence::read(&dir).unwrap();
    let records: Vec<&Record> = lines.iter().map(|l| l.as_ref().unwrap()).collect();
    assert_eq!(records.len(), 10);
    for (n, record) in records.iter().enumerate() {
        assert_eq!(
            (record.seq, record.agreement.clone()),
            (n as u64, format!("report r{n}"))
        );
    }
    let mut out = Vec::new();
    assert_eq!(report::verify(&dir, &mut out).unwrap(), 0);
    assert_eq!(
        String::from_utf8(out).unwrap().matches("ok mxi").count(),
        10
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[test]
fn signing_off_signs_and_keeps_nothing() {
    let pki = pki("off");
    let files = pki.party("a", "controller-A", "A");
    let settings = Settings {
        sign: false,
        evidence_dir: Some(pki.dir.join("evidence")),
        ..Settings::default()
    };
    let notary = Notary::open(&files, &settings, None).unwrap();
    assert!(!notary.enabled());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let header = rt
        .block_on(notary.sign_and_keep("cxi", "t", "B", COMMIT, b"", None))
        .unwrap();
    assert!(header.is_none());
    assert!(!pki.dir.join("evidence").exists());
    let _ = std::fs::remove_dir_all(&pki.dir);
}
