//! The controller's live web dashboard, served on the REST API's HTTPS listener under
//! `/dashboard/`: the domain's topology with link states, key rates and pool fill, the peer
//! domains' abstract topologies behind their gateway nodes, the sessions with their routes,
//! and events and alarms as they happen (server-sent events, [`stream`]). The page, its
//! script and style are embedded in the binary: nothing is fetched from elsewhere, and it
//! works offline.
//!
//! Every dashboard route takes the REST API's credentials (bearer token, client
//! certificate) or a browser session cookie, and answers others as the REST API does (401,
//! a problem; a browser asking for the page gets a short page saying how to log in). A
//! caller of the REST API obtains a one-time login link (`POST /api/v1/dashboard/logins`);
//! `GET /dashboard/login?token=...` spends it once and sets the session cookie (random,
//! HttpOnly, Secure, SameSite=Strict, for [`logins::SESSION_LIFETIME`]).
//!
//! - [`logins`] — one-time tokens and browser sessions;
//! - [`snapshot`] — the picture the page draws, as JSON;
//! - [`stream`] — the live stream.

pub mod logins;
pub mod snapshot;
pub mod stream;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::controller::Controller;
use super::credentials::{rest_credentials, unauthorized, Unauthorized};
use logins::{Logins, SESSION_LIFETIME, TOKEN_LIFETIME};
use snapshot::Snapshot;

/// The session cookie's name.
const COOKIE: &str = "qkdni_dashboard";

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const DASHBOARD_JS: &str = include_str!("assets/dashboard.js");
const LAYOUT_JS: &str = include_str!("assets/layout.js");
const DASHBOARD_CSS: &str = include_str!("assets/dashboard.css");

/// What the dashboard routes share.
pub(super) struct Dashboard {
    controller: Arc<Controller>,
    logins: Logins,
}

/// Who is looking (for the logs: never a secret).
#[derive(Clone)]
struct Viewer(String);

/// A one-time login to the dashboard.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DashboardLogin {
    /// The one-time token (256 random bits, base64url): valid once, for `expires_in_seconds`.
    pub token: String,
    /// The path that spends it and opens the dashboard in a browser
    /// (`/dashboard/login?token=...`), relative to the API's base URL.
    pub login_path: String,
    /// The dashboard's path.
    pub dashboard_path: String,
    pub expires_in_seconds: u64,
}

/// The dashboard's routes (with their own state: merged into the REST router).
pub fn router(controller: Arc<Controller>) -> Router {
    let dashboard = Arc::new(Dashboard {
        controller,
        logins: Logins::default(),
    });
    let viewed = Router::new()
        .route("/dashboard/", get(|| async { Html(INDEX_HTML) }))
        .route(
            "/dashboard/dashboard.js",
            get(|| asset(DASHBOARD_JS, "text/javascript")),
        )
        .route(
            "/dashboard/layout.js",
            get(|| asset(LAYOUT_JS, "text/javascript")),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| asset(DASHBOARD_CSS, "text/css")),
        )
        .route("/dashboard/api/snapshot", get(snapshot))
        .route("/dashboard/api/stream", get(live))
        .route("/dashboard/logout", post(logout))
        .layer(middleware::from_fn_with_state(dashboard.clone(), viewer));
    let issued = Router::new()
        .route("/api/v1/dashboard/logins", post(create_login))
        .layer(middleware::from_fn_with_state(dashboard.clone(), rest_only));
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/login", get(login))
        .merge(viewed)
        .layer(middleware::map_response(page_headers))
        .merge(issued)
        .with_state(dashboard)
}

async fn asset(text: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], text).into_response()
}

/// No framing, no referrer (a login link must not leak), nothing from elsewhere, no cache.
async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The session cookie's value, if the request carries one.
fn session_cookie(request: &Request) -> Option<&str> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Whether a browser asks for a page (and gets the login hint rather than a problem).
fn wants_html(request: &Request) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// A browser's answer to a missing, expired or spent login: 401 and how to log in.
fn login_hint(detail: &str) -> Response {
    let page = LOGIN_HTML.replace("{detail}", detail);
    let mut response = (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Admits a live session cookie or the REST API's credentials.
async fn viewer(State(d): State<Arc<Dashboard>>, mut request: Request, next: Next) -> Response {
    let who = match session_cookie(&request) {
        Some(session) if d.logins.session_valid(session) => Some("browser session".to_owned()),
        _ => rest_credentials(&d.controller, &request),
    };
    match who {
        Some(who) => {
            request.extensions_mut().insert(Viewer(who));
            next.run(request).await
        }
        None if wants_html(&request) => login_hint("You are not logged in, or your session ended."),
        None => unauthorized(),
    }
}

/// Admits the REST API's credentials only (a browser session cannot issue logins).
async fn rest_only(State(d): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    match rest_credentials(&d.controller, &request) {
        Some(_) => next.run(request).await,
        None => unauthorized(),
    }
}

/// Issues a one-time login link to the dashboard, valid once for 10 minutes.
#[utoipa::path(post, path = "/api/v1/dashboard/logins",
    responses((status = 201, description = "A one-time login", body = DashboardLogin), Unauthorized))]
#[tracing::instrument(name = "dashboard-login-issue", skip_all)]
pub(super) async fn create_login(
    State(d): State<Arc<Dashboard>>,
) -> (StatusCode, Json<DashboardLogin>) {
    let token = d.logins.issue_token();
    tracing::info!("dashboard one-time login issued");
    (
        StatusCode::CREATED,
        Json(DashboardLogin {
            login_path: format!("/dashboard/login?token={token}"),
            token,
            dashboard_path: "/dashboard/".into(),
            expires_in_seconds: TOKEN_LIFETIME.as_secs(),
        }),
    )
}

#[derive(Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// Spends a one-time token: sets the session cookie and opens the dashboard.
#[tracing::instrument(name = "dashboard-login", skip_all)]
async fn login(
    State(d): State<Arc<Dashboard>>,
    query: Result<Query<LoginQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let token = query.ok().and_then(|Query(q)| q.token);
    let Some(session) = token.as_deref().and_then(|t| d.logins.redeem(t)) else {
        tracing::warn!("dashboard login refused: unknown, expired or spent token");
        if !wants_html(&request) {
            return unauthorized();
        }
        return login_hint(
            "This login link is unknown, expired or already used: ask for a new one.",
        );
    };
    tracing::info!("dashboard login");
    let cookie = format!(
        "{COOKIE}={session}; Path=/dashboard; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to("/dashboard/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Ends the browser session.
#[tracing::instrument(name = "dashboard-logout", skip_all)]
async fn logout(State(d): State<Arc<Dashboard>>, request: Request) -> Response {
    if let Some(session) = session_cookie(&request) {
        d.logins.end_session(session);
    }
    let mut response = Html(LOGIN_HTML.replace("{detail}", "You are logged out.")).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "qkdni_dashboard=; Path=/dashboard; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
        ),
    );
    response
}

/// The picture as JSON.
async fn snapshot(State(d): State<Arc<Dashboard>>) -> Json<Snapshot> {
    Json(Snapshot::of(&d.controller))
}

/// The live stream.
async fn live(State(d): State<Arc<Dashboard>>, Extension(viewer): Extension<Viewer>) -> Response {
    stream::stream(d.controller.clone(), viewer.0).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = axum::http::Request::builder().uri("/dashboard/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let r = request(&[("cookie", "a=1; qkdni_dashboard=abc; b=2")]);
        assert_eq!(session_cookie(&r), Some("abc"));
        let r = request(&[("cookie", "a=1"), ("cookie", "qkdni_dashboard=xyz")]);
        assert_eq!(session_cookie(&r), Some("xyz"));
        assert_eq!(session_cookie(&request(&[("cookie", "qkdni=abc")])), None);
        assert_eq!(session_cookie(&request(&[])), None);
    }

    #[test]
    fn browsers_asking_for_a_page_are_told_how_to_log_in() {
        assert!(wants_html(&request(&[("accept", "text/html,*/*")])));
        assert!(!wants_html(&request(&[("accept", "application/json")])));
        let page = login_hint("spent");
        assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(page.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn the_page_loads_only_embedded_assets() {
        for asset in [
            INDEX_HTML,
            LOGIN_HTML,
            DASHBOARD_JS,
            LAYOUT_JS,
            DASHBOARD_CSS,
        ] {
            assert!(!asset.contains("http://") || asset.contains("http://www.w3.org/2000/svg"));
            assert!(!asset.contains("https://"));
        }
        for src in ["dashboard.css", "layout.js", "dashboard.js"] {
            assert!(INDEX_HTML.contains(src), "{src}");
        }
    }
}
