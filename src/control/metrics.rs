//! The controller's Prometheus metrics: its sessions (by state, kind and origin), relay
//! route installs and reroutes with their durations, and the Cxi messages it answered.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use super::messages::View;
use super::sessions::SessionState;
use crate::metrics::{durations, labels, set_all, Counters, Durations, Exposition, Gauges};

/// The metric families the controller updates as it works.
pub struct ControlMetrics {
    /// Installs of relay route changes on the KMs, by outcome.
    pub installs: Counters,
    pub install_seconds: Durations,
    /// Reroute passes that changed sessions, by outcome.
    pub reroutes: Counters,
    pub reroute_seconds: Durations,
    /// Cxi requests of peer controllers, by method, route and status.
    pub cxi: Counters,
    /// Round trips of this controller's Cxi requests to its peers, by peer domain and
    /// outcome (shared with the Cxi clients).
    pub cxi_round_trip_seconds: Durations,
    sessions: Gauges,
    /// The last install durations and the counts, for the manager's reports
    /// ([`super::figures`]).
    pub recent_installs: super::figures::Recent,
    /// The same of reroutes.
    pub recent_reroutes: super::figures::Recent,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        let metrics = Self {
            installs: Counters::default(),
            install_seconds: durations(),
            reroutes: Counters::default(),
            reroute_seconds: durations(),
            cxi: Counters::default(),
            cxi_round_trip_seconds: durations(),
            sessions: Gauges::default(),
            recent_installs: Default::default(),
            recent_reroutes: Default::default(),
        };
        // every outcome is a series from the start (at 0), as Prometheus advises
        for ok in [true, false] {
            let outcome = labels([("outcome", outcome(ok))]);
            let _ = metrics.installs.get_or_create(&outcome);
            let _ = metrics.install_seconds.get_or_create(&outcome);
            let _ = metrics.reroutes.get_or_create(&outcome);
            let _ = metrics.reroute_seconds.get_or_create(&outcome);
        }
        metrics
    }
}

fn outcome(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "failed"
    }
}

impl ControlMetrics {
    /// Counts an install and its duration.
    pub fn install(&self, ok: bool, seconds: f64) {
        let outcome = labels([("outcome", outcome(ok))]);
        self.installs.get_or_create(&outcome).inc();
        self.install_seconds
            .get_or_create(&outcome)
            .observe(seconds);
        self.recent_installs.record(ok, seconds);
    }

    /// Counts a reroute (from the triggering report to the installed routes).
    pub fn reroute(&self, ok: bool, seconds: f64) {
        let outcome = labels([("outcome", outcome(ok))]);
        self.reroutes.get_or_create(&outcome).inc();
        self.reroute_seconds
            .get_or_create(&outcome)
            .observe(seconds);
        self.recent_reroutes.record(ok, seconds);
    }

    /// The controller's metrics for `GET /metrics`; `view` reads the published view.
    pub fn exposition(&self, view: Box<dyn Fn() -> Arc<View> + Send + Sync>) -> Exposition {
        let mut registry = Registry::with_prefix("qkdni_controller");
        registry.register(
            "sessions",
            "Key supply sessions by state, kind (local or interworking) and origin",
            self.sessions.clone(),
        );
        registry.register(
            "route_installs",
            "Installs of relay route changes on the KMs, by outcome",
            self.installs.clone(),
        );
        registry.register(
            "route_install_duration_seconds",
            "Time to install relay route changes on the KMs (all or none)",
            self.install_seconds.clone(),
        );
        registry.register(
            "reroutes",
            "Reroute passes that changed sessions, by outcome",
            self.reroutes.clone(),
        );
        registry.register(
            "reroute_duration_seconds",
            "Time from the report that triggered a reroute to its routes installed",
            self.reroute_seconds.clone(),
        );
        registry.register(
            "cxi_round_trip_duration_seconds",
            "Time from sending a Cxi request to a peer controller to its whole answer, by peer domain and outcome (answered or not)",
            self.cxi_round_trip_seconds.clone(),
        );
        registry.register(
            "cxi_requests",
            "Cxi requests of peer controllers answered, by method, route and HTTP status",
            self.cxi.clone(),
        );
        let sessions = self.sessions.clone();
        let refresh = Box::new(move || {
            let view = view();
            let mut counts = std::collections::BTreeMap::new();
            for s in &view.sessions {
                let state = match s.state {
                    SessionState::Active => "active",
                    SessionState::Unroutable => "unroutable",
                };
                let kind = if s.interworking.is_some() {
                    "interworking"
                } else {
                    "local"
                };
                let origin = if s.on_demand {
                    "on-demand"
                } else {
                    "orchestrated"
                };
                *counts.entry((state, kind, origin)).or_insert(0.0) += 1.0;
            }
            set_all(
                &sessions,
                counts.into_iter().map(|((state, kind, origin), n)| {
                    (
                        labels([("state", state), ("kind", kind), ("origin", origin)]),
                        n,
                    )
                }),
            );
        });
        Exposition { registry, refresh }
    }
}
