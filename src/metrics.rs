//! Prometheus metrics of a daemon (OpenMetrics text at `GET /metrics`), served on a listener
//! of its own (`metrics_listen`): plain HTTP, for a management network or the loopback, as
//! Prometheus exporters usually are. The figures carry no key material; SAE and node names
//! are their only labels.
//!
//! Counters and histograms are updated where things happen; gauges that mirror state (pool
//! fill, sessions) are set by the daemon's `refresh` just before each scrape.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;
/// Counters by labels.
pub type Counters = Family<Labels, Counter>;
/// Gauges (floating point) by labels.
pub type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;
/// Duration histograms (seconds) by labels.
pub type Durations = Family<Labels, Histogram, fn() -> Histogram>;

/// Buckets from 0.5 ms to about 16 s, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A family of duration histograms.
pub fn durations() -> Durations {
    Family::new_with_constructor(duration_histogram)
}

/// Labels from pairs of names and values.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Sets the gauges of a family to `values`, dropping series no longer reported.
pub fn set_all(gauges: &Gauges, values: impl IntoIterator<Item = (Labels, f64)>) {
    gauges.clear();
    for (labels, value) in values {
        gauges.get_or_create(&labels).set(value);
    }
}

/// Middleware (a `route_layer`) that counts a router's requests by method, route and HTTP
/// status.
pub async fn count_requests(
    State(counters): State<Counters>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = request.method().to_string();
    let response = next.run(request).await;
    counters
        .get_or_create(&vec![
            ("method", method),
            ("route", route),
            ("code", response.status().as_u16().to_string()),
        ])
        .inc();
    response
}

/// What a daemon exposes: its registry and how to bring its gauges up to date.
pub struct Exposition {
    pub registry: Registry,
    pub refresh: Box<dyn Fn() + Send + Sync>,
}

/// The text a scrape gets.
pub fn render(exposition: &Exposition) -> String {
    (exposition.refresh)();
    let mut text = String::new();
    // writing into a String cannot fail
    let _ = encode(&mut text, &exposition.registry);
    text
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, exposition: Arc<Exposition>) -> std::io::Result<()> {
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let exposition = exposition.clone();
            async move {
                // gauges may read the daemon's store
                let text = tokio::task::spawn_blocking(move || render(&exposition))
                    .await
                    .unwrap_or_default();
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, router).await
}

/// Binds the metrics listener, if one is configured.
pub async fn bind(addr: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => TcpListener::bind(addr).await.map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_as_openmetrics_text() {
        let mut registry = Registry::with_prefix("qkdni");
        let requests = Counters::default();
        let pools = Gauges::default();
        let seconds = durations();
        registry.register("requests", "Requests", requests.clone());
        registry.register("pool_fill_ratio", "Pool fill", pools.clone());
        registry.register("request_duration_seconds", "Latency", seconds.clone());
        requests.get_or_create(&labels([("sae", "sae-a1-1")])).inc();
        seconds
            .get_or_create(&labels([("call", "enc_keys")]))
            .observe(0.003);
        let exposition = Exposition {
            registry,
            refresh: Box::new(move || set_all(&pools, [(labels([("link", "a1-a2")]), 0.5)])),
        };
        let text = render(&exposition);
        assert!(
            text.contains("qkdni_requests_total{sae=\"sae-a1-1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("qkdni_pool_fill_ratio{link=\"a1-a2\"} 0.5"),
            "{text}"
        );
        assert!(
            text.contains(
                "qkdni_request_duration_seconds_bucket{le=\"0.004\",call=\"enc_keys\"} 1"
            ) || text.contains("qkdni_request_duration_seconds_count{call=\"enc_keys\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
