//! Link-state advertisements: what one node of a distributed QKDN tells every other node
//! about itself (its QKD links with their live state, the SAEs its KM serves), and the
//! messages that flood them from neighbour to neighbour.

use serde::{Deserialize, Serialize};

/// One node's advertisement. A newer one (higher `seq`) from the same origin replaces the
/// older everywhere; an advertisement whose age passes [`MAX_AGE_MS`] is dropped (its origin
/// is gone: a live origin refreshes its own well before).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lsa {
    /// The node that originated it.
    pub origin: String,
    /// Sequence number: the origin's wall clock in milliseconds at origination, raised past
    /// the previous one when the clock did not move. Needs no storage to stay increasing
    /// across a restart of the origin.
    pub seq: u64,
    /// When the origin made it (Unix time, ms): its age is measured from here.
    pub originated_ms: u64,
    /// Every QKD link of the origin inside the domain.
    pub links: Vec<LsaLink>,
    /// The SAEs the origin's KM serves.
    pub saes: Vec<String>,
    /// Base URL of the origin's KMA server (how other nodes of the domain reach it, e.g. to
    /// ask a gateway node for an interworking route).
    #[serde(default)]
    pub kma: String,
    /// A gateway node's Qx links to other QKDNs (Y.3818 6.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qx_links: Vec<QxAdvert>,
    /// Other QKDNs' SAEs reachable through the origin (a gateway node), as a border router
    /// redistributes external routes: their interworking sessions run through it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub externals: Vec<External>,
    /// The peer QKDNs the origin speaks Cxi with for the domain (the domain's speaker, a
    /// gateway node): where the domain's nodes ask for interworking routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub speaks_for: Vec<String>,
}

/// A Qx link of a gateway node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QxAdvert {
    pub id: String,
    /// The gateway node at the other end, in `peer_domain`.
    pub peer_node: String,
    pub peer_domain: String,
    pub up: bool,
    pub key_rate_bps: f64,
}

/// An SAE of another QKDN reachable through the advertising gateway node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct External {
    pub sae: String,
    /// The node (in `domain`) whose KM serves it: the relay's destination or origin.
    pub node: String,
    pub domain: String,
    /// Whether keys toward `node` leave the domain through the advertising gateway (a
    /// session this domain originates); otherwise keys of that SAE only come in there (the
    /// peer's session) and no route toward `node` follows from it.
    #[serde(default = "outbound_default")]
    pub outbound: bool,
}

fn outbound_default() -> bool {
    true
}

/// A QKD link as its end reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LsaLink {
    /// The link id (the same at both ends).
    pub id: String,
    /// The node at the other end.
    pub peer: String,
    /// Whether the link delivers key (admin up, signal present, QBER below threshold).
    pub up: bool,
    /// Secret key rate, bit/s.
    pub key_rate_bps: f64,
    /// Key stored for this end and not yet used, bits.
    pub available_bits: f64,
    /// Quantum bit error rate last measured (0..1).
    pub qber: f64,
}

/// Oldest an advertisement may get before it is dropped.
pub const MAX_AGE_MS: u64 = 120_000;

/// How often a node re-originates its advertisement when nothing changed.
pub const REFRESH_MS: u64 = 30_000;

/// The body of a flood (`POST /kma/v1/link-state`) and of its answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Flood {
    /// Advertisements the sender passes on.
    pub lsas: Vec<Lsa>,
    /// A database exchange (the sender's whole database, sent when the link to the receiver
    /// comes up or the sender starts): the receiver answers with every advertisement it holds
    /// that the sender lacks or holds an older copy of. A plain flood is answered with the
    /// receiver's newer copies of the advertisements it was sent.
    #[serde(default)]
    pub exchange: bool,
}

impl Lsa {
    /// Age at `now_ms` (Unix ms).
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.originated_ms)
    }

    /// Whether it is too old to keep at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.age_ms(now_ms) > MAX_AGE_MS
    }

    /// Whether the state it advertises differs from `other`'s enough to flood at once: a
    /// link added, removed, up or down, its rate changed by a tenth, its stored key by a
    /// quarter, or its QBER by a hundredth; another SAE set.
    pub fn differs_materially(&self, other: &Lsa) -> bool {
        if self.saes != other.saes
            || self.links.len() != other.links.len()
            || self.externals != other.externals
            || self.speaks_for != other.speaks_for
            || self.kma != other.kma
            || self.qx_links.len() != other.qx_links.len()
            || self
                .qx_links
                .iter()
                .zip(&other.qx_links)
                .any(|(a, b)| a.id != b.id || a.up != b.up)
        {
            return true;
        }
        self.links.iter().zip(&other.links).any(|(a, b)| {
            a.id != b.id
                || a.peer != b.peer
                || a.up != b.up
                || relative_change(a.key_rate_bps, b.key_rate_bps) > 0.1
                || relative_change(a.available_bits, b.available_bits) > 0.25
                || (a.qber - b.qber).abs() > 0.01
        })
    }
}

fn relative_change(a: f64, b: f64) -> f64 {
    let base = a.abs().max(b.abs());
    if base == 0.0 {
        0.0
    } else {
        (a - b).abs() / base
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
