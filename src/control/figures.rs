//! Control-layer figures for the domain's manager (Y.3818 clause 7, performance and security
//! management): how long relay route installs and reroutes took and how long the peer
//! controllers took to answer Cxi, with the controller's refusals, served on
//! `GET /api/v1/reports` of the northbound REST API. The manager reads it every report
//! period and puts it into the report pack its XLMO sends the peer (`control_layer` of the
//! performance report, `controller_refusals` of the security report).
//!
//! The Prometheus histograms (`qkdni_controller_route_install_duration_seconds`, ...) keep
//! buckets since the start; a report wants the recent durations themselves. So each figure
//! also keeps its last [`WINDOW`] successful durations ([`Recent`]) and its counts since
//! the start: the summary's count never goes down (a report missed is no figure lost), its
//! mean and percentiles describe what happened lately.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::controller::Controller;
use super::credentials::Unauthorized;
use crate::refusals::RefusalReport;

/// Durations kept per figure for the mean and percentiles.
pub const WINDOW: usize = 256;

/// The recent durations of one figure and its counts since the controller started.
#[derive(Debug, Default)]
pub struct Recent {
    inner: Mutex<RecentInner>,
}

#[derive(Debug, Default)]
struct RecentInner {
    /// The last successful durations, in ms, oldest first.
    window: VecDeque<f64>,
    ok: u64,
    failed: u64,
}

impl Recent {
    /// Records one operation: its outcome and how long it took (seconds). Only successful
    /// durations enter the window (a failure's duration is mostly its timeout).
    pub fn record(&self, ok: bool, seconds: f64) {
        let mut inner = self.inner.lock().expect("recent durations");
        if !ok {
            inner.failed += 1;
            return;
        }
        inner.ok += 1;
        if inner.window.len() == WINDOW {
            inner.window.pop_front();
        }
        let ms = if seconds.is_finite() {
            seconds.max(0.0) * 1e3
        } else {
            0.0
        };
        inner.window.push_back(ms);
    }

    /// Counts since the start, and the mean, median, 95th percentile and maximum of the
    /// window.
    pub fn summary(&self) -> DurationSummary {
        let inner = self.inner.lock().expect("recent durations");
        let mut sorted: Vec<f64> = inner.window.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mean = (n > 0).then(|| round(sorted.iter().sum::<f64>() / n as f64));
        DurationSummary {
            count: inner.ok,
            failed: inner.failed,
            samples: n as u32,
            mean_ms: mean,
            p50_ms: percentile(&sorted, 0.50),
            p95_ms: percentile(&sorted, 0.95),
            max_ms: sorted.last().copied().map(round),
        }
    }
}

/// The nearest-rank percentile `q` (0 < q <= 1) of ascending `sorted`.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(round(sorted[rank.clamp(1, sorted.len()) - 1]))
}

/// Microsecond precision is plenty for a report.
fn round(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

/// One figure: counts since the controller started, and the mean, median, 95th percentile
/// and maximum (ms) of its last successful durations (at most 256). The statistics are
/// absent while there is no duration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DurationSummary {
    /// Successful operations since the controller started.
    pub count: u64,
    /// Failed operations since the controller started.
    pub failed: u64,
    /// Durations the statistics are computed over (the most recent ones).
    pub samples: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
}

/// Cxi round trips to one peer controller: from sending a request to its whole answer
/// read (and, for signed messages, verified); a request without an answer is `failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerRoundTrips {
    /// The peer domain.
    pub domain: String,
    pub round_trips: DurationSummary,
}

/// The control layer's part of a performance report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlLayerReport {
    /// Installs of relay route changes on the KMs (all or none), each from its start to
    /// the last KM's confirmation.
    pub route_installs: DurationSummary,
    /// Reroute passes that changed sessions, each from the report that triggered it to its
    /// routes installed.
    pub reroutes: DurationSummary,
    /// Cxi round trips, by peer domain (the peers configured now).
    pub cxi_round_trips: Vec<PeerRoundTrips>,
}

/// What the controller gives its domain's manager for the report packs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControllerReport {
    /// Install, reroute and Cxi figures.
    pub control_layer: ControlLayerReport,
    /// Refusals at the controller's reference points (Cxi, REST, NETCONF): counts by point
    /// and reason, the recent ones with their sources, alarms.
    pub refusals: RefusalReport,
}

/// The Cxi round trips of one client (shared by its clones).
pub type RoundTrips = Arc<Recent>;

impl Controller {
    /// The control-layer figures as they are now.
    pub fn control_layer(&self) -> ControlLayerReport {
        ControlLayerReport {
            route_installs: self.metrics.recent_installs.summary(),
            reroutes: self.metrics.recent_reroutes.summary(),
            cxi_round_trips: self
                .peers()
                .iter()
                .map(|client| PeerRoundTrips {
                    domain: client.peer.domain.clone(),
                    round_trips: client.round_trips().summary(),
                })
                .collect(),
        }
    }

    /// The figures and refusals for the domain's manager.
    pub fn manager_report(&self) -> ControllerReport {
        ControllerReport {
            control_layer: self.control_layer(),
            refusals: self.refusals.report(),
        }
    }
}

/// Control-layer figures (route installs, reroutes, Cxi round trips) and the controller's
/// refusals with their sources, for the domain's QKDN manager's report packs.
#[utoipa::path(get, path = "/api/v1/reports",
    responses((status = 200, description = "The figures and refusals", body = ControllerReport), Unauthorized))]
pub(super) async fn reports(State(c): State<Arc<Controller>>) -> Json<ControllerReport> {
    Json(c.manager_report())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_figure_has_counts_and_no_statistics() {
        let recent = Recent::default();
        let summary = recent.summary();
        assert_eq!(summary, DurationSummary::default());
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"count": 0, "failed": 0, "samples": 0})
        );
        recent.record(false, 10.0);
        let summary = recent.summary();
        assert_eq!((summary.count, summary.failed, summary.samples), (0, 1, 0));
        assert_eq!(summary.max_ms, None);
    }

    #[test]
    fn mean_median_p95_and_max_of_the_durations() {
        let recent = Recent::default();
        // 1 ms .. 100 ms, shuffled
        for i in (1..=100).rev().step_by(2).chain((1..=100).step_by(2)) {
            recent.record(true, f64::from(i) / 1e3);
        }
        recent.record(false, 30.0);
        let summary = recent.summary();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.failed, 1);
        assert_eq!(summary.samples, 100);
        assert_eq!(summary.mean_ms, Some(50.5));
        assert_eq!(summary.p50_ms, Some(50.0));
        assert_eq!(summary.p95_ms, Some(95.0));
        assert_eq!(summary.max_ms, Some(100.0));
        // one duration: every statistic is that one
        let one = Recent::default();
        one.record(true, 0.0123456);
        let s = one.summary();
        assert_eq!(
            (s.mean_ms, s.p50_ms, s.p95_ms, s.max_ms),
            (Some(12.346), Some(12.346), Some(12.346), Some(12.346))
        );
    }

    #[test]
    fn the_statistics_cover_the_last_durations_and_the_count_all() {
        let recent = Recent::default();
        // a slow start that has left the window
        for _ in 0..WINDOW {
            recent.record(true, 5.0);
        }
        for _ in 0..WINDOW {
            recent.record(true, 0.002);
        }
        let summary = recent.summary();
        assert_eq!(summary.count, 2 * WINDOW as u64);
        assert_eq!(summary.samples as usize, WINDOW);
        assert_eq!(summary.max_ms, Some(2.0));
        assert_eq!(summary.p95_ms, Some(2.0));
        // a duration that cannot be one counts, as 0
        recent.record(true, f64::NAN);
        recent.record(true, -1.0);
        let summary = recent.summary();
        assert_eq!(summary.count, 2 * WINDOW as u64 + 2);
        assert_eq!(summary.p50_ms, Some(2.0));
        assert!(summary.mean_ms.unwrap() < 2.0);
    }

    #[test]
    fn the_api_documents_the_report() {
        use utoipa::OpenApi;
        let doc = crate::control::rest::ApiDoc::openapi();
        assert!(doc.paths.paths.contains_key("/api/v1/reports"));
        let schemas = &doc.components.expect("components").schemas;
        for name in [
            "ControllerReport",
            "ControlLayerReport",
            "DurationSummary",
            "PeerRoundTrips",
            "RefusalReport",
            "Refusal",
            "Point",
        ] {
            assert!(schemas.contains_key(name), "{name}: {:?}", schemas.keys());
        }
    }

    #[test]
    fn the_report_reads_back_as_sent() {
        let recent = Recent::default();
        recent.record(true, 0.004);
        let report = ControllerReport {
            control_layer: ControlLayerReport {
                route_installs: recent.summary(),
                reroutes: DurationSummary::default(),
                cxi_round_trips: vec![PeerRoundTrips {
                    domain: "B".into(),
                    round_trips: recent.summary(),
                }],
            },
            refusals: RefusalReport::default(),
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            serde_json::from_str::<ControllerReport>(&json).unwrap(),
            report
        );
    }
}
