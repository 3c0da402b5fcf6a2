//! The HTTPS listener every qkdni API runs on: connection caps, timeouts at every stage of a
//! connection, bounded request heads and bodies, and limit errors in the API's own format.
//!
//! A connection is admitted under the listener's [`ConnectionLimits`], must finish its TLS
//! handshake within `handshake_timeout_ms`, and is closed when it waits longer than
//! `idle_timeout_ms` for a request head (hyper's header read timeout runs from the moment
//! the connection waits for a request, so an idle keep-alive connection and half a header
//! are treated alike). A request's URI, headers and body are checked before any handler
//! runs: the body is read whole, within `body_timeout_ms` and `max_body_bytes`, before the
//! router sees it (every qkdni endpoint takes a small JSON body). Refusals are answered in
//! the listener's [`ErrorStyle`]: ETSI GS QKD 014's `{"message", "details"}` on a KM's
//! ETSI 014 and KMA ports, RFC 9457 problems elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::conn_limit::{Admission, ConnectionLimits};
use crate::refusals::{Point, Refusals, Source};
use crate::tls::{Issuers, PeerIdentity};

/// Limits of one HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Caps on open connections (in total and per source address).
    pub connections: ConnectionLimits,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout_ms: u64,
    /// Time a connection may wait for (the rest of) a request head before it is closed.
    pub idle_timeout_ms: u64,
    /// Time a client has to send a request's whole body.
    pub body_timeout_ms: u64,
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// Longest request target, path and query (414 beyond).
    pub max_uri_bytes: usize,
    /// Largest request header section, names and values (431 beyond).
    pub max_header_bytes: usize,
    /// Most header fields of a request (431 beyond).
    pub max_headers: usize,
}

/// Limits of a daemon's two HTTPS listeners (`[limits]` of the controller's and the
/// manager's configuration): its northbound REST API and its reference point to the peer
/// domain (Cxi or Mxi).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerLimits {
    /// The northbound REST API (orchestrators, operators).
    pub rest_listener: HttpLimits,
    /// The listener of the peer domain's controller (Cxi) or manager (Mxi).
    pub peer_listener: HttpLimits,
}

impl ListenerLimits {
    /// Why these limits cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        self.rest_listener
            .check()
            .map_err(|e| format!("limits.rest_listener: {e}"))?;
        self.peer_listener
            .check()
            .map_err(|e| format!("limits.peer_listener: {e}"))
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connections: ConnectionLimits::new(1024, 256),
            handshake_timeout_ms: 10_000,
            // above the 30 s for which qkdni's HTTP clients keep idle connections, so that
            // a client never reuses a connection the server is closing
            idle_timeout_ms: 60_000,
            body_timeout_ms: 10_000,
            max_body_bytes: 1024 * 1024,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}

impl HttpLimits {
    /// Why these limits cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let c = &self.connections;
        if c.max_connections == 0 || c.max_per_source == 0 {
            return Err("connection caps must be positive".into());
        }
        if self.handshake_timeout_ms == 0 || self.idle_timeout_ms == 0 || self.body_timeout_ms == 0
        {
            return Err("timeouts must be positive".into());
        }
        if self.max_uri_bytes == 0 || self.max_header_bytes == 0 || self.max_headers == 0 {
            return Err("request head limits must be positive".into());
        }
        Ok(())
    }
}

/// Seconds a caller answered 503 should wait before asking again (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// Format of the errors a listener answers itself (limits, unknown paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// RFC 9457 problem details.
    Problem,
    /// The ETSI GS QKD 014 `Error` data format (`message`, `details`).
    Etsi014,
}

impl ErrorStyle {
    /// An error answer with `status` and `message`; 503 carries `Retry-After`.
    pub fn error(self, status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
        let message = message.into();
        let mut response = match self {
            ErrorStyle::Problem => {
                crate::problem::Problem::new(status, kind, message).into_response()
            }
            ErrorStyle::Etsi014 => (
                status,
                axum::Json(crate::etsi014::ErrorBody {
                    message,
                    details: Some(vec![serde_json::json!({ "reason": kind })]),
                }),
            )
                .into_response(),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::PAYLOAD_TOO_LARGE {
            // the rest of the body is not read: the connection cannot carry another request
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Where a listener records its refusals (failed handshakes and refusing answers) and its
/// handshakes' key exchange groups.
#[derive(Clone)]
pub struct Watch {
    /// The daemon's refusals.
    pub refusals: Arc<Refusals>,
    /// The reference point of a request's path (and of handshakes: the path `""`).
    pub point: fn(&str) -> Point,
}

impl Watch {
    /// A listener serving one reference point.
    pub fn of(refusals: Arc<Refusals>, point: Point) -> Self {
        let point: fn(&str) -> Point = match point {
            Point::Etsi014 => |_| Point::Etsi014,
            Point::Kma => |_| Point::Kma,
            Point::Kxi => |_| Point::Kxi,
            Point::Cxi => |_| Point::Cxi,
            Point::Mxi => |_| Point::Mxi,
            Point::Rest => |_| Point::Rest,
            Point::Netconf => |_| Point::Netconf,
            Point::LocalControl => |_| Point::LocalControl,
        };
        Self { refusals, point }
    }

    /// A KM's KMA listener: KMA, and Kxi on the ETSI GS QKD 020 and Kxi-2 paths.
    pub fn kma(refusals: Arc<Refusals>) -> Self {
        Self {
            refusals,
            point: Point::of_kma_path,
        }
    }
}

/// Serves `router` over HTTPS on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    issuers: Issuers,
    router: Router,
    limits: HttpLimits,
    style: ErrorStyle,
) {
    serve_watched(listener, config, issuers, router, limits, style, None).await
}

/// [`serve`], recording refusals and handshakes in `watch`.
pub async fn serve_watched(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    issuers: Issuers,
    router: Router,
    limits: HttpLimits,
    style: ErrorStyle,
    watch: Option<Watch>,
) {
    let acceptor = TlsAcceptor::from(config);
    let admission = Admission::new("https", limits.connections);
    let limits = Arc::new(limits);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                // typically out of descriptors: back off instead of spinning
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = admission.admit(remote.ip()) else {
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let issuers = issuers.clone();
        let limits = limits.clone();
        let watch = watch.clone();
        tokio::spawn(async move {
            serve_connection(
                acceptor, tcp, remote, issuers, router, &limits, style, watch,
            )
            .await;
            drop(admitted);
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    issuers: Issuers,
    router: Router,
    limits: &Arc<HttpLimits>,
    style: ErrorStyle,
    watch: Option<Watch>,
) {
    let handshake = tokio::time::timeout(
        Duration::from_millis(limits.handshake_timeout_ms),
        acceptor.accept(tcp),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%remote, %error, "TLS handshake failed");
            if let Some(watch) = &watch {
                let reason = crate::refusals::tls_reason(&error);
                // a probe that connects and closes is no refusal
                if reason != "tls-closed" {
                    watch.refusals.record(
                        (watch.point)(""),
                        &reason,
                        Source::new(remote.ip(), None),
                        &error.to_string(),
                    );
                }
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            if let Some(watch) = &watch {
                watch.refusals.record(
                    (watch.point)(""),
                    "tls-timeout",
                    Source::new(remote.ip(), None),
                    "no TLS handshake within the handshake timeout",
                );
            }
            return;
        }
    };
    let connection = tls.get_ref().1;
    let group = crate::tls::group_name(connection.negotiated_key_exchange_group());
    let identity = PeerIdentity(
        connection
            .peer_certificates()
            .and_then(|chain| issuers.identity(chain)),
    );
    tracing::debug!(%remote, group, peer = identity.0.as_deref().unwrap_or("-"), version = ?connection.protocol_version(), "TLS handshake");
    if let Some(watch) = &watch {
        watch.refusals.handshake((watch.point)(""), &group);
    }
    let request_limits = limits.clone();
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(identity.clone());
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(remote));
        let router = router.clone();
        let limits = request_limits.clone();
        let watch = watch.clone();
        let identity = identity.clone();
        async move {
            let path = request.uri().path().to_owned();
            let response = match bounded(request, &limits, style).await {
                Ok(request) => router.oneshot(request).await?,
                Err(refusal) => refusal,
            };
            match watch {
                Some(watch) if crate::refusals::is_refusal(response.status().as_u16()) => {
                    let point = (watch.point)(&path);
                    Ok::<_, std::convert::Infallible>(
                        record_refusal(&watch.refusals, point, remote, identity, response).await,
                    )
                }
                _ => Ok(response),
            }
        }
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.idle_timeout_ms))
        // hyper's own limits stay as a backstop above ours, whose answers are formatted
        .max_headers(limits.max_headers.saturating_mul(4).max(100))
        .max_buf_size((limits.max_uri_bytes + limits.max_header_bytes).max(64 * 1024) * 2);
    let result = builder.serve_connection(TokioIo::new(tls), service).await;
    if let Err(error) = result {
        tracing::debug!(%remote, %error, "connection ended with error");
    }
}

/// Records a refusing `response` (its reason read from its body) and returns it unchanged.
async fn record_refusal(
    refusals: &Refusals,
    point: Point,
    remote: SocketAddr,
    identity: PeerIdentity,
    response: Response,
) -> Response {
    let (parts, body) = response.into_parts();
    // refusals are small JSON bodies; a larger one is passed on whole, its reason unread
    let bytes = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(bytes) => bytes,
        Err(_) => axum::body::Bytes::new(),
    };
    let (reason, detail) = crate::refusals::http_reason(parts.status.as_u16(), &bytes);
    refusals.record(
        point,
        &reason,
        Source::new(remote.ip(), identity.0),
        &detail,
    );
    Response::from_parts(parts, Body::from(bytes))
}

/// The request with its body read whole, or the answer refusing it.
async fn bounded(
    request: Request<hyper::body::Incoming>,
    limits: &HttpLimits,
    style: ErrorStyle,
) -> Result<Request<Body>, Response> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > limits.max_uri_bytes {
        return Err(style.error(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            format!(
                "the request target is longer than {} bytes",
                limits.max_uri_bytes
            ),
        ));
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > limits.max_headers || header_bytes > limits.max_header_bytes {
        return Err(style.error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header-fields-too-large",
            format!(
                "at most {} header fields and {} bytes of headers",
                limits.max_headers, limits.max_header_bytes
            ),
        ));
    }
    let too_large = || {
        style.error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!(
                "the request body is larger than {} bytes",
                limits.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, limits.max_body_bytes);
    let collected = tokio::time::timeout(
        Duration::from_millis(limits.body_timeout_ms),
        limited.collect(),
    )
    .await;
    match collected {
        Ok(Ok(body)) => Ok(Request::from_parts(parts, Body::from(body.to_bytes()))),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(error)) => Err(style.error(
            StatusCode::BAD_REQUEST,
            "body-unreadable",
            format!("reading the request body: {error}"),
        )),
        Err(_) => Err(style.error(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!(
                "the request body did not arrive within {} ms",
                limits.body_timeout_ms
            ),
        )),
    }
}

/// Serves `router` over HTTPS on `listener` under `limits` until the task is dropped.
/// Clients stay anonymous (their [`PeerIdentity`] is empty): for APIs authenticated
/// otherwise (bearer tokens).
pub async fn serve_https(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    limits: HttpLimits,
) {
    serve_https_with(listener, config, Issuers::default(), router, limits).await
}

/// [`serve_https`] for a server that trusts other QKDNs' CAs (`issuers`), with RFC 9457
/// problems for the listener's own errors.
pub async fn serve_https_with(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    issuers: Issuers,
    router: Router,
    limits: HttpLimits,
) {
    serve_https_watched(listener, config, issuers, router, limits, None).await
}

/// [`serve_https_with`], recording refusals and handshakes in `watch`.
pub async fn serve_https_watched(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    issuers: Issuers,
    router: Router,
    limits: HttpLimits,
    watch: Option<Watch>,
) {
    serve_watched(
        listener,
        config,
        issuers,
        router,
        limits,
        ErrorStyle::Problem,
        watch,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn refusals_speak_the_listeners_format() {
        let problem =
            ErrorStyle::Problem.error(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "big");
        assert_eq!(problem.status(), 413);
        assert_eq!(
            problem.headers()[header::CONTENT_TYPE],
            crate::problem::PROBLEM_JSON
        );
        assert_eq!(problem.headers()[header::CONNECTION], "close");
        let json = body(problem).await;
        assert_eq!(json["type"], "urn:qkdni:problem:body-too-large");
        assert_eq!(json["status"], 413);

        let etsi = ErrorStyle::Etsi014.error(StatusCode::SERVICE_UNAVAILABLE, "busy", "later");
        assert_eq!(etsi.headers()[header::RETRY_AFTER], "1");
        let json = body(etsi).await;
        assert_eq!(json["message"], "later");
        assert_eq!(json["details"][0]["reason"], "busy");
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        assert!(HttpLimits::default().check().is_ok());
        let mut limits = HttpLimits::default();
        limits.connections.max_per_source = 0;
        assert!(limits.check().is_err());
        let limits = HttpLimits {
            idle_timeout_ms: 0,
            ..HttpLimits::default()
        };
        assert!(limits.check().is_err());
    }
}
