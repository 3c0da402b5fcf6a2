//! Ck, the KM's side of the reference point to its domain's controller: asking for the route
//! of keys to an SAE this KM has no route to (an SAE of another QKDN, Y.3818 9.1 procedure 1,
//! or one inside the domain: keys on demand). The controller installs the route and the SAE's
//! entry on the KMs before it answers.

use serde_json::json;
use tracing::Instrument;

use crate::km::agent::Agent;

/// How long a route request may take (agreement with a peer domain included).
const ROUTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the controller answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAnswer {
    /// The route is installed.
    Installed,
    /// No domain knows the SAE.
    UnknownSae,
    /// No route (HTTP status of the controller's answer).
    Refused { status: u16 },
    /// The controller did not answer.
    Unreachable,
}

/// Asks `controller` (its base URL) for the route of keys from `master` (served here) to
/// `slave`.
pub async fn request_route(
    agent: &Agent,
    controller: &str,
    master: &str,
    slave: &str,
) -> RouteAnswer {
    let span =
        tracing::info_span!("relay", master = %master, slave = %slave, step = "interworking-route");
    let answer = agent
        .peers
        .post(format!("{controller}/ck/v1/interworking-routes"))
        .timeout(ROUTE_TIMEOUT)
        .json(&json!({ "master_sae": master, "slave_sae": slave }))
        .send()
        .instrument(span.clone())
        .await;
    match answer {
        Ok(r) if r.status().is_success() => {
            tracing::info!(parent: &span, "interworking route installed by the controller");
            RouteAnswer::Installed
        }
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => RouteAnswer::UnknownSae,
        Ok(r) => {
            let status = r.status();
            let detail = r.text().await.unwrap_or_default();
            tracing::warn!(parent: &span, %status, %detail, "no interworking route");
            RouteAnswer::Refused {
                status: status.as_u16(),
            }
        }
        Err(error) => {
            tracing::warn!(parent: &span, %error, "controller unreachable");
            RouteAnswer::Unreachable
        }
    }
}
