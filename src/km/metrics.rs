//! A KM agent's Prometheus metrics: its QKD links (key rate, QBER, pool fill, state), the
//! ETSI GS QKD 014 API (requests and latency per call and SAE, keys per SAE) and key relay
//! (messages sent, forwarded and delivered, failures).

use prometheus_client::registry::Registry;

use crate::metrics::{durations, labels, set_all, Counters, Durations, Exposition, Gauges};
use crate::quantum::LinkState;

/// The metric families a KM agent updates as it works.
pub struct KmMetrics {
    /// ETSI 014 requests by call, SAE and HTTP status.
    pub etsi014_requests: Counters,
    /// ETSI 014 request durations by call.
    pub etsi014_seconds: Durations,
    /// Keys handed out by SAE and role (master: Get key; slave: Get key with key IDs).
    pub etsi014_keys: Counters,
    /// Relay messages by step (origin, forward, deliver) and outcome (ok, failed).
    pub relays: Counters,
    link_rate: Gauges,
    link_qber: Gauges,
    link_up: Gauges,
    pool_fill: Gauges,
}

impl Default for KmMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl KmMetrics {
    pub fn new() -> Self {
        let metrics = Self {
            etsi014_requests: Counters::default(),
            etsi014_seconds: durations(),
            etsi014_keys: Counters::default(),
            relays: Counters::default(),
            link_rate: Gauges::default(),
            link_qber: Gauges::default(),
            link_up: Gauges::default(),
            pool_fill: Gauges::default(),
        };
        // every step and outcome is a series from the start (at 0), as Prometheus advises
        for step in ["origin", "forward", "deliver"] {
            for outcome in ["ok", "failed"] {
                let _ = metrics
                    .relays
                    .get_or_create(&labels([("step", step), ("outcome", outcome)]));
            }
        }
        metrics
    }

    /// Counts an ETSI 014 request and its duration.
    pub fn etsi014_request(&self, call: &str, sae: &str, status: u16, seconds: f64) {
        self.etsi014_requests
            .get_or_create(&labels([
                ("call", call),
                ("sae", sae),
                ("code", &status.to_string()),
            ]))
            .inc();
        self.etsi014_seconds
            .get_or_create(&labels([("call", call)]))
            .observe(seconds);
    }

    /// Counts keys handed to `sae` in `role`.
    pub fn keys(&self, sae: &str, role: &str, keys: u64) {
        self.etsi014_keys
            .get_or_create(&labels([("sae", sae), ("role", role)]))
            .inc_by(keys);
    }

    /// Counts a relay message at `step` with its outcome.
    pub fn relay(&self, step: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.relays
            .get_or_create(&labels([("step", step), ("outcome", outcome)]))
            .inc();
    }
}

/// One QKD link's figures at a scrape.
pub struct LinkFigure {
    pub link: String,
    pub peer: String,
    pub rate_bps: f64,
    pub qber: Option<f64>,
    pub state: LinkState,
    /// Key blocks held over the pool's capacity.
    pub fill_ratio: f64,
}

/// The agent's metrics for `GET /metrics`; `links` reads the links' figures at each scrape.
pub fn exposition(
    m: &KmMetrics,
    links: Box<dyn Fn() -> Vec<LinkFigure> + Send + Sync>,
) -> Exposition {
    let mut registry = Registry::with_prefix("qkdni_km");
    registry.register(
        "etsi014_requests",
        "ETSI GS QKD 014 requests answered, by call, SAE and HTTP status",
        m.etsi014_requests.clone(),
    );
    registry.register(
        "etsi014_request_duration_seconds",
        "Time to answer an ETSI GS QKD 014 request, by call",
        m.etsi014_seconds.clone(),
    );
    registry.register(
        "etsi014_keys",
        "Keys handed to SAEs, by SAE and role (master or slave)",
        m.etsi014_keys.clone(),
    );
    registry.register(
        "relay_messages",
        "Key relay messages by step (origin, forward, deliver) and outcome",
        m.relays.clone(),
    );
    registry.register(
        "link_secret_key_rate_bps",
        "Secret key rate of each QKD link, bit/s",
        m.link_rate.clone(),
    );
    registry.register(
        "link_qber",
        "Quantum bit error rate of each QKD link with a physical model",
        m.link_qber.clone(),
    );
    registry.register(
        "link_up",
        "1 when the QKD link is up, 0.5 degraded, 0 down",
        m.link_up.clone(),
    );
    registry.register(
        "pool_fill_ratio",
        "Key blocks held for each QKD link over its pool's capacity",
        m.pool_fill.clone(),
    );
    let gauges = [
        m.link_rate.clone(),
        m.link_qber.clone(),
        m.link_up.clone(),
        m.pool_fill.clone(),
    ];
    let refresh = Box::new(move || refresh(&gauges, links()));
    Exposition { registry, refresh }
}

/// Sets the link gauges (rate, QBER, state, fill) from the links' figures.
fn refresh(gauges: &[Gauges; 4], links: Vec<LinkFigure>) {
    let (mut rate, mut qber, mut up, mut fill) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for figure in links {
        let link_label = || {
            labels([
                ("link", figure.link.as_str()),
                ("peer", figure.peer.as_str()),
            ])
        };
        rate.push((link_label(), figure.rate_bps));
        if let Some(q) = figure.qber {
            qber.push((link_label(), q));
        }
        let state = match figure.state {
            LinkState::Up => 1.0,
            LinkState::Degraded => 0.5,
            LinkState::Down => 0.0,
        };
        up.push((link_label(), state));
        fill.push((link_label(), figure.fill_ratio.min(1.0)));
    }
    set_all(&gauges[0], rate);
    set_all(&gauges[1], qber);
    set_all(&gauges[2], up);
    set_all(&gauges[3], fill);
}
