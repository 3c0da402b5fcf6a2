//! The signature step of a reference point, in one place per side: a middleware for its
//! server ([`ServerPoint`], [`verify_and_sign`]) and one helper for its client
//! ([`ClientPoint::send`]).
//!
//! A signed message carries its COSE_Sign1 in the `Qkdni-Signature` header (base64url
//! without padding); the body stays the standard's. The server checks a request's signature
//! before any handler sees it (the signer must be the TLS peer, certified by its domain's
//! CA, and the signed message line must be this request's method and path), keeps it, runs
//! the handler and signs its answer; the client signs its request, keeps it, and checks and
//! keeps the signed answer.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::evidence::{b64, Direction, NewRecord};
use super::{cose, Notary, NrError};
use crate::tls::PeerIdentity;

/// The HTTP header of a signature.
pub const HEADER: &str = "qkdni-signature";
/// Largest answer read by a client.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The message line a request signs.
pub fn request_line(method: &Method, path: &str) -> String {
    format!("{method} {path}")
}

/// The message line an answer signs.
pub fn answer_line(status: u16, method: &Method, path: &str) -> String {
    format!("answer {status} {method} {path}")
}

/// How a reference point's server refuses a request: its standard error, which also counts
/// and records the refusal. Arguments: HTTP status, problem type, detail.
pub type Refuse = Arc<dyn Fn(StatusCode, &'static str, String) -> Response + Send + Sync>;

/// The agreement a signed request belongs to, `None` for requests that are not signed
/// messages of the reference point. Arguments: method, path, body.
pub type Classify = fn(&Method, &str, &[u8]) -> Option<String>;

/// Whether a classified request may come unsigned (from a third-party client of the
/// standard, which knows no signatures): it is checked when signed, and its `200` answer — an
/// acknowledgement given inline — is signed and kept all the same. Arguments: method, path.
pub type Lenient = fn(&Method, &str) -> bool;

/// For reference points whose classified requests must all be signed.
pub fn never_lenient(_: &Method, _: &str) -> bool {
    false
}

/// The peer domain of a TLS identity allowed at a reference point.
pub type PeerOf = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Set on the answer of a request whose signature the server step checked: the signer's
/// identity, for the layers outside it (the audit log's [`crate::audit::hooks::reference_point`]).
#[derive(Debug, Clone)]
pub struct VerifiedSigner(pub String);

/// The server side of a reference point.
pub struct ServerPoint {
    pub notary: Arc<Notary>,
    /// `cxi`, `mxi`, `kxi`.
    pub point: &'static str,
    pub classify: Classify,
    pub lenient: Lenient,
    /// The peer domain of a TLS identity allowed at this point; `None`: the request goes on
    /// unchecked, for the handler to refuse as a stranger's.
    pub peer_of: PeerOf,
    pub refuse: Refuse,
}

/// The middleware (`axum::middleware::from_fn_with_state`) of a [`ServerPoint`].
pub async fn verify_and_sign(
    State(point): State<Arc<ServerPoint>>,
    request: Request,
    next: Next,
) -> Response {
    let notary = &point.notary;
    // a GET is a signed message only where the point classifies it (a Kxi-2 status read,
    // whose answer stands for an acknowledgement that did not come)
    if !notary.enabled() || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let identity = request
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.clone());
    let Some((identity, peer)) = identity.and_then(|i| (point.peer_of)(&i).map(|p| (i, p))) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let signature = request.headers().get(HEADER).cloned();
    let (parts, body) = request.into_parts();
    // the listener has read the body whole within its limits already
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            return (point.refuse)(
                StatusCode::BAD_REQUEST,
                "malformed-message",
                error.to_string(),
            )
        }
    };
    let Some(agreement) = (point.classify)(&method, &path, &body) else {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    };
    let line = request_line(&method, &path);
    let received = match signature {
        Some(signature) => {
            match verify_and_keep(
                &point, &identity, &peer, &agreement, line, &body, &signature,
            )
            .await
            {
                Ok(received) => Some(received),
                Err(refused) => return refused,
            }
        }
        None if (point.lenient)(&method, &path) => None,
        None => {
            tracing::warn!(point = point.point, %identity, %line, "unsigned message refused");
            return (point.refuse)(
                StatusCode::UNAUTHORIZED,
                "signature-missing",
                format!("{line} from {identity}: no {HEADER} header (messages must be signed)"),
            );
        }
    };
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let status = response.status().as_u16();
    if received.is_none() && status != 200 {
        // an unsigned request of a lenient path: only an inline acknowledgement is signed
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => return unavailable(NrError::Store(error.to_string())),
    };
    let line = answer_line(status, &method, &path);
    let re = received.as_ref().map(|(cose, _)| cose.as_slice());
    let signed = match notary
        .sign_and_keep(point.point, &agreement, &peer, &line, &body, re)
        .await
    {
        Ok(signed) => signed,
        Err(error) => return unavailable(error),
    };
    if let Some(signed) = signed {
        parts.headers.insert(HEADER, signed);
    }
    if let Some((_, signer)) = received {
        parts.extensions.insert(VerifiedSigner(signer));
    }
    Response::from_parts(parts, Body::from(body))
}

/// Checks the signature of a request (`line`, `body`) from `identity` and keeps it: the
/// COSE_Sign1 and its verified signer, or the refusal to answer.
async fn verify_and_keep(
    point: &ServerPoint,
    identity: &str,
    peer: &str,
    agreement: &str,
    line: String,
    body: &[u8],
    signature: &HeaderValue,
) -> Result<(Vec<u8>, String), Response> {
    let cose = b64().decode(signature.as_bytes()).map_err(|error| {
        (point.refuse)(
            StatusCode::UNAUTHORIZED,
            "bad-signature",
            format!("{line} from {identity}: {HEADER} is not base64url: {error}"),
        )
    })?;
    let verified = point
        .notary
        .check(&cose, body, identity, &line)
        .map_err(|error| {
            tracing::warn!(point = point.point, %identity, %line, %error, "signature refused");
            let (status, kind) = match error {
                NrError::SignerMismatch { .. } => (StatusCode::FORBIDDEN, "signer-mismatch"),
                _ => (StatusCode::UNAUTHORIZED, "bad-signature"),
            };
            (point.refuse)(status, kind, format!("{line} from {identity}: {error}"))
        })?;
    point
        .notary
        .keep(NewRecord {
            point: point.point,
            agreement: agreement.to_owned(),
            peer: peer.to_owned(),
            direction: Direction::Received,
            signer: verified.signer.clone(),
            msg: line,
            body: body.to_vec(),
            cose: cose.clone(),
        })
        .await
        .map_err(unavailable)?;
    Ok((cose, verified.signer))
}

/// The daemon could not sign or keep evidence: nothing is answered that it cannot prove.
fn unavailable(error: NrError) -> Response {
    tracing::error!(%error, "non-repudiation step failed");
    crate::problem::Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "evidence-unavailable",
        error.to_string(),
    )
    .into_response()
}

/// The client side of a reference point toward one peer.
#[derive(Clone)]
pub struct ClientPoint {
    pub notary: Arc<Notary>,
    /// `cxi`, `mxi`, `kxi`.
    pub point: &'static str,
    /// The peer domain.
    pub peer: String,
    /// The identity the peer's answers must be signed by (`name@domain`).
    pub peer_identity: String,
}

/// An answer as the client got it, its signature checked and kept.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: Bytes,
}

/// Why a signed exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Nothing (or no whole answer) came back.
    #[error("{0}")]
    Unreachable(#[from] reqwest::Error),
    /// The answer is larger than this client reads.
    #[error("answer larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    /// The request could not be signed or kept, or the answer's signature does not hold.
    #[error(transparent)]
    Signature(#[from] NrError),
}

impl ClientPoint {
    /// Signs `request` as a message of agreement `agreement` (keeping it), sends it, reads
    /// the answer (up to 4 MiB) and, when it is signed, checks and keeps it. An answer of
    /// status 2xx or 409 (one that carries agreement) must be signed; refusals (other 4xx,
    /// 5xx) need not be: they prove nothing and agree to nothing.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        mut request: reqwest::Request,
        agreement: &str,
    ) -> Result<Answer, ExchangeError> {
        let method = request.method().clone();
        let path = request.url().path().to_owned();
        let body = request
            .body()
            .and_then(|b| b.as_bytes())
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let line = request_line(&method, &path);
        let mut sent_cose = None;
        if self.notary.enabled() {
            let header = self
                .notary
                .sign_and_keep(self.point, agreement, &self.peer, &line, &body, None)
                .await?
                .ok_or_else(|| NrError::Key("no signing key".into()))?;
            sent_cose = Some(b64().decode(header.as_bytes()).expect("our own base64url"));
            request.headers_mut().insert(HEADER, header);
        }
        let mut response = http.execute(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            answer.extend_from_slice(&chunk);
            if answer.len() > MAX_ANSWER_BYTES {
                return Err(ExchangeError::TooLarge);
            }
        }
        if let Some(sent) = sent_cose {
            let signature = headers.get(HEADER);
            let agreeing = (200..300).contains(&status) || status == 409;
            match signature {
                None if agreeing => {
                    return Err(NrError::Missing(format!(
                        "the {status} answer of {} to {line} is not signed",
                        self.peer_identity
                    ))
                    .into())
                }
                None => {}
                Some(signature) => {
                    let cose = b64()
                        .decode(signature.as_bytes())
                        .map_err(|e| NrError::Malformed(format!("{HEADER}: {e}")))?;
                    let answer_line = answer_line(status, &method, &path);
                    let verified =
                        self.notary
                            .check(&cose, &answer, &self.peer_identity, &answer_line)?;
                    if verified.re.as_deref() != Some(cose::sha256(&sent).as_slice()) {
                        return Err(NrError::Malformed(
                            "the answer is signed for another request".into(),
                        )
                        .into());
                    }
                    self.notary
                        .keep(NewRecord {
                            point: self.point,
                            agreement: agreement.to_owned(),
                            peer: self.peer.clone(),
                            direction: Direction::Received,
                            signer: verified.signer,
                            msg: answer_line,
                            body: answer.clone(),
                            cose,
                        })
                        .await?;
                }
            }
        }
        Ok(Answer {
            status,
            headers,
            body: answer.into(),
        })
    }
}

/// A header value of a COSE_Sign1.
pub(super) fn header_value(cose: &[u8]) -> HeaderValue {
    HeaderValue::from_str(&b64().encode(cose)).expect("base64url is a valid header value")
}
