//! Refusals at a daemon's reference points (Y.3818 clause 7, performance and security
//! management): every request, handshake or login a daemon turns away is counted per
//! reference point and reason, its source (peer address and, when known, certificate
//! identity or user name) is kept in a bounded list of recent refusals, and a refusal rate
//! above a point's threshold (refusals per minute) raises an alarm.
//!
//! One [`Refusals`] per daemon, shared by its listeners: the HTTPS listener
//! ([`crate::https`]) records failed TLS handshakes and every refusing answer (4xx but 404,
//! and 503) of ETSI GS QKD 014, KMA, Kxi, Cxi, Mxi and the REST APIs; the NETCONF server's
//! application records failed logins. Daemons subscribe to [`Refusals::alarms`] to turn an
//! alarm into a NETCONF notification or an event, expose the counts as Prometheus metrics
//! ([`Refusals::register`]) and put a [`RefusalReport`] into their reports.
//!
//! An alarm is raised when a point's refusals in the last minute exceed its threshold, and
//! not again for that point until the rate has fallen back to the threshold or below (so a
//! sustained attack gives one alarm, a second wave another).

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::metrics::{labels, Counters};

/// The window of the thresholds.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Recent refusals kept by default.
pub const DEFAULT_RECENT: usize = 64;
/// Longest reason or detail kept (characters); a client chooses much of what they say.
const MAX_TEXT: usize = 160;

/// A reference point (or management interface) of a qkdni daemon.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Point {
    /// ETSI GS QKD 014 key delivery to SAEs (KSA).
    Etsi014,
    /// Key relay between KMs of one domain (KMA), and TLS on the KMA listener.
    Kma,
    /// Kxi (ETSI GS QKD 020 between KMs of two domains, Kxi-2 status).
    Kxi,
    /// Cxi between the controllers of two domains.
    Cxi,
    /// Mxi between the managers of two domains.
    Mxi,
    /// A northbound REST API (controller, manager).
    Rest,
    /// NETCONF over SSH (authentication).
    Netconf,
    /// A KM's local control listener (distributed control, CK).
    LocalControl,
}

impl Point {
    /// Every point, in order.
    pub const ALL: [Point; 8] = [
        Point::Etsi014,
        Point::Kma,
        Point::Kxi,
        Point::Cxi,
        Point::Mxi,
        Point::Rest,
        Point::Netconf,
        Point::LocalControl,
    ];

    /// Its name, as in metrics, YANG and configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Point::Etsi014 => "etsi014",
            Point::Kma => "kma",
            Point::Kxi => "kxi",
            Point::Cxi => "cxi",
            Point::Mxi => "mxi",
            Point::Rest => "rest",
            Point::Netconf => "netconf",
            Point::LocalControl => "local-control",
        }
    }

    /// The point of a request to `path` on a KM's KMA listener, which serves Kxi (ETSI
    /// GS QKD 020 `/kmapi/`, Kxi-2 `/kxi2/`) beside the KMA.
    pub fn of_kma_path(path: &str) -> Point {
        if path.starts_with("/kmapi/") || path.starts_with("/kxi2/") {
            Point::Kxi
        } else {
            Point::Kma
        }
    }
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[refusals]` of a daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefusalConfig {
    /// Refusals per minute above which a point raises an alarm (0: never), by point;
    /// points not named get [`RefusalConfig::default_threshold`].
    pub thresholds: BTreeMap<Point, u32>,
    /// The threshold of points not named in `thresholds` (0: no alarm).
    pub default_threshold: u32,
    /// Recent refusals kept, with their sources.
    pub recent: usize,
}

impl Default for RefusalConfig {
    fn default() -> Self {
        Self {
            thresholds: BTreeMap::new(),
            // a client that is refused once a second for a minute is worth a look
            default_threshold: 60,
            recent: DEFAULT_RECENT,
        }
    }
}

impl RefusalConfig {
    /// The threshold of `point` (0: none).
    pub fn threshold(&self, point: Point) -> u32 {
        self.thresholds
            .get(&point)
            .copied()
            .unwrap_or(self.default_threshold)
    }
}

/// One refusal, as the recent list keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// When (RFC 3339).
    pub time: String,
    /// Where.
    pub point: Point,
    /// Why, a short token (`tls-unknown-ca`, `unauthorized`, `not-a-peer`, ...).
    pub reason: String,
    /// The peer's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Who the peer proved to be (certificate identity) or claimed to be (login name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// What the daemon answered, for people (at most 160 characters).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The count of one point and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefusalCount {
    pub point: Point,
    pub reason: String,
    /// Refusals since the daemon started.
    pub count: u64,
}

/// A threshold crossed: more than `threshold` refusals at `point` within a minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefusalAlarm {
    /// When (RFC 3339).
    pub time: String,
    pub point: Point,
    /// Refusals at the point in the last minute.
    pub per_minute: u32,
    /// The threshold crossed.
    pub threshold: u32,
    /// The refusal that crossed it.
    pub last: Refusal,
}

/// A daemon's refusals: counts, recent ones and alarms (for reports and YANG state).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct RefusalReport {
    /// Counts since the daemon started, by point and reason.
    pub counts: Vec<RefusalCount>,
    /// The most recent refusals, oldest first.
    pub recent: Vec<Refusal>,
    /// Threshold alarms raised since the daemon started.
    pub alarms: u64,
    /// The last alarm raised, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_alarm: Option<RefusalAlarm>,
}

impl RefusalReport {
    /// Refusals at `point`, all reasons.
    pub fn total(&self, point: Point) -> u64 {
        self.counts
            .iter()
            .filter(|c| c.point == point)
            .map(|c| c.count)
            .sum()
    }

    /// Refusals at `point` for `reason`.
    pub fn count(&self, point: Point, reason: &str) -> u64 {
        self.counts
            .iter()
            .filter(|c| c.point == point && c.reason == reason)
            .map(|c| c.count)
            .sum()
    }
}

#[derive(Default)]
struct Inner {
    counts: BTreeMap<(Point, String), u64>,
    recent: VecDeque<Refusal>,
    /// Times of the refusals of the last minute, by point.
    windows: BTreeMap<Point, VecDeque<Instant>>,
    /// Points whose alarm is raised (not re-armed yet).
    alarmed: BTreeMap<Point, bool>,
    alarms: u64,
    last_alarm: Option<RefusalAlarm>,
}

/// The refusals of one daemon (see the module docs).
pub struct Refusals {
    config: RefusalConfig,
    inner: Mutex<Inner>,
    /// `refusals_total{point,reason}`.
    counter: Counters,
    /// `refusal_alarms_total{point}`.
    alarm_counter: Counters,
    /// `tls_handshakes_total{point,group}`: the accepted handshakes beside the refused ones.
    handshakes: Counters,
    alarms: broadcast::Sender<RefusalAlarm>,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::new(RefusalConfig::default())
    }
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a refusal is about, before it is recorded.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The peer's address.
    pub address: Option<IpAddr>,
    /// Its certificate identity or login name.
    pub identity: Option<String>,
}

impl Source {
    /// A peer known by its address (and identity, if any).
    pub fn new(address: IpAddr, identity: Option<String>) -> Self {
        Self {
            address: Some(address),
            identity,
        }
    }
}

fn clip(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect()
}

impl Refusals {
    /// Refusals counted under `config`.
    pub fn new(config: RefusalConfig) -> Self {
        let (alarms, _) = broadcast::channel(64);
        Self {
            config,
            inner: Mutex::new(Inner::default()),
            counter: Counters::default(),
            alarm_counter: Counters::default(),
            handshakes: Counters::default(),
            alarms,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RefusalConfig {
        &self.config
    }

    /// Alarms as they are raised.
    pub fn alarms(&self) -> broadcast::Receiver<RefusalAlarm> {
        self.alarms.subscribe()
    }

    /// Adds `refusals_total{point,reason}`, `refusal_alarms_total{point}` and
    /// `tls_handshakes_total{point,group}` to a daemon's registry (under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        for point in Point::ALL {
            let _ = self
                .alarm_counter
                .get_or_create(&labels([("point", point.as_str())]));
        }
        registry.register(
            "refusals",
            "Requests, handshakes and logins refused, by reference point and reason",
            self.counter.clone(),
        );
        registry.register(
            "refusal_alarms",
            "Refusal rate alarms raised, by reference point",
            self.alarm_counter.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes accepted, by reference point and negotiated key exchange group",
            self.handshakes.clone(),
        );
    }

    /// Counts a handshake accepted at `point` with key exchange `group`.
    pub fn handshake(&self, point: Point, group: &str) {
        self.handshakes
            .get_or_create(&labels([("point", point.as_str()), ("group", group)]))
            .inc();
    }

    /// Records a refusal at `point` for `reason` now; returns the alarm it raised, if any
    /// (also sent to the subscribers of [`Refusals::alarms`]).
    pub fn record(
        &self,
        point: Point,
        reason: &str,
        source: Source,
        detail: &str,
    ) -> Option<RefusalAlarm> {
        self.record_at(Instant::now(), point, reason, source, detail)
    }

    /// [`Refusals::record`] at time `now`.
    pub fn record_at(
        &self,
        now: Instant,
        point: Point,
        reason: &str,
        source: Source,
        detail: &str,
    ) -> Option<RefusalAlarm> {
        let reason = clip(reason);
        let refusal = Refusal {
            time: crate::netconf::server::now_rfc3339(),
            point,
            reason: reason.clone(),
            source: source.address.map(|a| a.to_string()),
            identity: source.identity.as_deref().map(clip),
            detail: clip(detail),
        };
        tracing::info!(
            %point,
            reason = %refusal.reason,
            source = refusal.source.as_deref().unwrap_or("-"),
            identity = refusal.identity.as_deref().unwrap_or("-"),
            "refused: {}",
            refusal.detail
        );
        self.counter
            .get_or_create(&labels([("point", point.as_str()), ("reason", &reason)]))
            .inc();
        let threshold = self.config.threshold(point);
        let alarm = {
            let mut inner = self.inner.lock().expect("refusals");
            *inner.counts.entry((point, reason)).or_default() += 1;
            if self.config.recent > 0 {
                while inner.recent.len() >= self.config.recent {
                    inner.recent.pop_front();
                }
                inner.recent.push_back(refusal.clone());
            }
            let window = inner.windows.entry(point).or_default();
            window.push_back(now);
            while window
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
            {
                window.pop_front();
            }
            let per_minute = u32::try_from(window.len()).unwrap_or(u32::MAX);
            if threshold == 0 {
                // nothing to watch: keep no window
                window.clear();
                None
            } else if per_minute <= threshold {
                inner.alarmed.insert(point, false);
                None
            } else if inner.alarmed.get(&point).copied().unwrap_or(false) {
                None
            } else {
                inner.alarmed.insert(point, true);
                inner.alarms += 1;
                let alarm = RefusalAlarm {
                    time: refusal.time.clone(),
                    point,
                    per_minute,
                    threshold,
                    last: refusal,
                };
                inner.last_alarm = Some(alarm.clone());
                Some(alarm)
            }
        };
        if let Some(alarm) = &alarm {
            self.alarm_counter
                .get_or_create(&labels([("point", point.as_str())]))
                .inc();
            tracing::warn!(
                %point,
                per_minute = alarm.per_minute,
                threshold = alarm.threshold,
                "refusal rate above the threshold"
            );
            let _ = self.alarms.send(alarm.clone());
        }
        alarm
    }

    /// The counts, the recent refusals and the alarms.
    pub fn report(&self) -> RefusalReport {
        let inner = self.inner.lock().expect("refusals");
        RefusalReport {
            counts: inner
                .counts
                .iter()
                .map(|((point, reason), count)| RefusalCount {
                    point: *point,
                    reason: reason.clone(),
                    count: *count,
                })
                .collect(),
            recent: inner.recent.iter().cloned().collect(),
            alarms: inner.alarms,
            last_alarm: inner.last_alarm.clone(),
        }
    }
}

/// The reason of a refusing HTTP answer: the last segment of an RFC 9457 problem's `type`,
/// an ETSI 014 error's `details[].reason`, or else the status (`unauthorized`,
/// `service-unavailable`, ...). Also returns the answer's message for the record.
pub fn http_reason(status: u16, body: &[u8]) -> (String, String) {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let from_problem = json
        .as_ref()
        .and_then(|j| j.get("type"))
        .and_then(|t| t.as_str())
        .and_then(|t| t.rsplit([':', '/']).next())
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let from_details = || {
        json.as_ref()
            .and_then(|j| j.get("details"))
            .and_then(|d| d.as_array())
            .and_then(|d| {
                d.iter()
                    .find_map(|d| d.get("reason").and_then(|r| r.as_str()))
            })
            .map(str::to_owned)
    };
    let reason = from_problem.or_else(from_details).unwrap_or_else(|| {
        axum::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map(|r| r.to_ascii_lowercase().replace([' ', '\''], "-"))
            .unwrap_or_else(|| status.to_string())
    });
    let message = json
        .as_ref()
        .and_then(|j| {
            ["detail", "message", "title"]
                .iter()
                .find_map(|k| j.get(*k).and_then(|m| m.as_str()))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (reason, format!("{status} {message}").trim().to_owned())
}

/// Whether an HTTP answer with `status` refuses the request: client errors but `404` (a
/// missing resource is an answer, not a refusal) and `410`, and `503`.
pub fn is_refusal(status: u16) -> bool {
    ((400..500).contains(&status) && status != 404 && status != 410) || status == 503
}

/// The reason of a failed TLS handshake (`tls-` and rustls' alert or error, kebab-case).
pub fn tls_reason(error: &std::io::Error) -> String {
    let text = match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => "no-certificate".to_owned(),
        Some(rustls::Error::InvalidCertificate(e)) => match e {
            rustls::CertificateError::UnknownIssuer => "unknown-ca".to_owned(),
            rustls::CertificateError::Expired => "certificate-expired".to_owned(),
            rustls::CertificateError::BadSignature => "bad-signature".to_owned(),
            rustls::CertificateError::Revoked => "certificate-revoked".to_owned(),
            rustls::CertificateError::NotValidForName => "certificate-name".to_owned(),
            _ => "bad-certificate".to_owned(),
        },
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("alert-{}", kebab(&format!("{alert:?}")))
        }
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible".to_owned(),
        Some(rustls::Error::PeerMisbehaved(_)) => "misbehaved".to_owned(),
        Some(rustls::Error::InappropriateMessage { .. })
        | Some(rustls::Error::InappropriateHandshakeMessage { .. })
        | Some(rustls::Error::InvalidMessage(_)) => "not-tls".to_owned(),
        Some(_) => "error".to_owned(),
        None => match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed".to_owned(),
            std::io::ErrorKind::InvalidData => "not-tls".to_owned(),
            _ => "io".to_owned(),
        },
    };
    format!("tls-{text}")
}

/// `UnknownCa` as `unknown-ca`.
fn kebab(name: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            out.push('-');
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(ip: &str) -> Source {
        Source::new(ip.parse().unwrap(), Some("sae-a1-1".into()))
    }

    fn config(threshold: u32) -> RefusalConfig {
        RefusalConfig {
            thresholds: [(Point::Etsi014, threshold)].into(),
            default_threshold: 0,
            recent: 4,
        }
    }

    #[test]
    fn counts_by_point_and_reason_with_bounded_sources() {
        let refusals = Refusals::new(config(0));
        for i in 0..6 {
            refusals.record(
                Point::Etsi014,
                "unauthorized",
                from(&format!("10.0.0.{i}")),
                "401 a client certificate is required",
            );
        }
        refusals.record(Point::Cxi, "not-a-peer", from("10.0.1.1"), "403");
        let report = refusals.report();
        assert_eq!(report.count(Point::Etsi014, "unauthorized"), 6);
        assert_eq!(report.total(Point::Cxi), 1);
        assert_eq!(report.total(Point::Mxi), 0);
        // the last four, oldest first, each with its source
        assert_eq!(report.recent.len(), 4);
        assert_eq!(report.recent[0].source.as_deref(), Some("10.0.0.3"));
        assert_eq!(report.recent[3].point, Point::Cxi);
        assert_eq!(report.recent[3].identity.as_deref(), Some("sae-a1-1"));
        // no threshold: no alarm
        assert_eq!(report.alarms, 0);
    }

    #[test]
    fn an_alarm_when_the_rate_crosses_the_threshold_then_rearmed_once_it_falls() {
        let refusals = Refusals::new(config(3));
        let mut alarms = refusals.alarms();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let record = |s| refusals.record_at(at(s), Point::Etsi014, "bad-request", from("::1"), "");
        // three within the minute: at the threshold, not above
        for s in 0..3 {
            assert!(record(s).is_none());
        }
        let alarm = record(3).expect("the fourth within a minute crosses 3/min");
        assert_eq!((alarm.per_minute, alarm.threshold), (4, 3));
        assert_eq!(alarm.point, Point::Etsi014);
        assert_eq!(alarms.try_recv().unwrap(), alarm);
        // the attack goes on: no second alarm
        for s in 4..10 {
            assert!(record(s).is_none());
        }
        // other points have their own threshold (none here)
        for _ in 0..10 {
            assert!(refusals
                .record_at(at(10), Point::Cxi, "not-a-peer", from("::1"), "")
                .is_none());
        }
        // a minute later the rate has fallen: re-armed, and a new wave alarms again
        assert!(record(100).is_none());
        for s in 101..103 {
            assert!(record(s).is_none());
        }
        let again = record(103).expect("a second wave");
        assert_eq!(again.per_minute, 4);
        let report = refusals.report();
        assert_eq!(report.alarms, 2);
        assert_eq!(report.last_alarm, Some(again));
    }

    #[test]
    fn thresholds_come_from_the_configuration() {
        let config: RefusalConfig = toml::from_str(
            "default_threshold = 20\nrecent = 8\n[thresholds]\netsi014 = 5\ncxi = 0\n",
        )
        .unwrap();
        assert_eq!(config.threshold(Point::Etsi014), 5);
        assert_eq!(config.threshold(Point::Cxi), 0);
        assert_eq!(config.threshold(Point::Mxi), 20);
        assert!(toml::from_str::<RefusalConfig>("[thresholds]\nqx = 1\n").is_err());
        assert_eq!(RefusalConfig::default().threshold(Point::Kxi), 60);
    }

    #[test]
    fn reasons_of_http_answers() {
        let problem = br#"{"type":"urn:qkdni:problem:not-a-peer","status":403,"title":"x","detail":"only B"}"#;
        assert_eq!(
            http_reason(403, problem),
            ("not-a-peer".into(), "403 only B".into())
        );
        let kxi = br#"{"type":"https://example/problems/unauthorized","status":401,"title":"Unauthorized"}"#;
        assert_eq!(http_reason(401, kxi).0, "unauthorized");
        let etsi = br#"{"message":"too big","details":[{"reason":"body-too-large"}]}"#;
        assert_eq!(http_reason(413, etsi).0, "body-too-large");
        let plain = br#"{"message":"a client certificate is required"}"#;
        assert_eq!(
            http_reason(401, plain),
            (
                "unauthorized".into(),
                "401 a client certificate is required".into()
            )
        );
        assert_eq!(http_reason(503, b"").0, "service-unavailable");
        assert!(is_refusal(401) && is_refusal(409) && is_refusal(503));
        assert!(!is_refusal(404) && !is_refusal(200) && !is_refusal(500));
    }

    #[test]
    fn reasons_of_failed_handshakes() {
        let error = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(tls_reason(&error), "tls-unknown-ca");
        let error = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert_eq!(tls_reason(&error), "tls-alert-unknown-ca");
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(tls_reason(&eof), "tls-closed");
    }
}
