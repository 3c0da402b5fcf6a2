//! The quantum layer: QKD modules and links.
//!
//! qkdni has no quantum hardware: [`emulated`] provides QKD module pairs that behave like real
//! links (finite key rate from [`link_model`], identical blocks at both ends, faults). A real
//! module is plugged in by implementing [`QkdModule`]; it puts its key into a [`KeySink`]
//! ([`sink`]), which the key manager implements.

pub mod emulated;
pub mod link_model;
pub mod sink;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use link_model::{LinkParams, BB84_QBER_LIMIT};
use sink::KeySink;

/// Operational state of a QKD link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Generating key at the link's rate.
    Up,
    /// No quantum signal: no key.
    Down,
    /// Signal present but QBER above the BB84 threshold: no key.
    Degraded,
}

/// How a link's secret key rate is determined.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RateSpec {
    /// A fixed secret key rate in bit/s.
    Fixed { rate_bps: f64 },
    /// A physical link model.
    Model(LinkParams),
}

/// QBER reported for a degraded link (above [`BB84_QBER_LIMIT`]).
pub const DEGRADED_QBER: f64 = 0.15;

/// What the key manager and operators see of a link at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkCondition {
    pub state: LinkState,
    /// Most blocks the link's pool may hold: the module pauses when it is full.
    pub capacity_blocks: usize,
    /// Current secret key rate in bit/s.
    pub rate_bps: f64,
    /// Current QBER, when the link has a physical model (or is degraded).
    pub qber: Option<f64>,
}

impl RateSpec {
    /// The link's condition in `state`.
    pub fn condition(&self, state: LinkState, capacity_blocks: usize) -> LinkCondition {
        let (nominal_rate, nominal_qber) = match self {
            RateSpec::Fixed { rate_bps } => (*rate_bps, None),
            RateSpec::Model(params) => match params.evaluate() {
                Ok(perf) => (perf.secret_key_rate_bps, Some(perf.qber)),
                Err(_) => (0.0, None),
            },
        };
        match state {
            LinkState::Up => LinkCondition {
                state,
                capacity_blocks,
                rate_bps: nominal_rate,
                qber: nominal_qber,
            },
            LinkState::Down => LinkCondition {
                state,
                capacity_blocks,
                rate_bps: 0.0,
                qber: None,
            },
            LinkState::Degraded => LinkCondition {
                state,
                capacity_blocks,
                rate_bps: 0.0,
                qber: Some(DEGRADED_QBER.max(BB84_QBER_LIMIT)),
            },
        }
    }
}

/// How a QKD module tells its key manager whether it hears its peer module: `true` while the
/// quantum and classical channels work, `false` on loss of signal (a cut fibre, a dead peer).
pub type SignalReport = std::sync::Arc<dyn Fn(bool) + Send + Sync>;

/// A QKD module feeding one link's key pool in the key manager's store (its [`KeySink`]).
///
/// Implementations deliver key blocks with the same numbers and bytes to the KMs at both
/// ends of the link, follow the link state published on `control`, and report loss and
/// return of signal on `signal`.
pub trait QkdModule: Send + 'static {
    /// The link this module serves.
    fn link_id(&self) -> &str;
    /// Starts the module; it runs until the returned task is aborted.
    fn start(
        self: Box<Self>,
        sink: std::sync::Arc<dyn KeySink>,
        control: watch::Receiver<LinkCondition>,
        signal: SignalReport,
    ) -> tokio::task::JoinHandle<()>;
}
