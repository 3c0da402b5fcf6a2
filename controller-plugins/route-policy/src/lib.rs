//! The route-policy extension point of the qkdni QKDN controller.
//!
//! The controller core knows only this crate: it takes a snapshot of its domain
//! ([`KeyNetwork`]: KM nodes and QKD links with their live state), a key demand between two
//! KMs ([`Demand`]) and asks a [`RoutePolicy`] for a [`RoutePlan`]: one or more key relay
//! paths, each with the share of the demanded key rate it carries. Policies live in their own
//! crates (see `qkdni-routing`) and are chosen per domain in configuration.
//!
//! Route computation is pure: a policy reads the snapshot and returns a plan, nothing else.
//! A snapshot is turned into a `petgraph` graph once ([`PreparedNetwork`]); many demands can
//! then be routed over the same prepared graph. For large graphs the prepared network also
//! keeps search structures: a flat adjacency ([`Csr`]), landmark distances for goal-directed
//! search ([`Landmarks`]) and reusable search buffers ([`SearchScratch`]).
//!
//! [`min_cut_bps`] gives the physical limit of the network between two KMs: the max-flow /
//! min-cut of the up links' key rates.

mod cache;
mod csr;
mod flow;
mod landmarks;
mod network;
mod prepared;
mod scratch;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use cache::{LandmarkKey, LANDMARKS_AFTER_QUERIES, MAX_LANDMARK_SETS};
pub use csr::Csr;
pub use flow::{max_flow, min_cut_bps, Flow};
pub use landmarks::{Landmarks, LANDMARK_COUNT};
pub use network::{Demand, KeyNetwork, Link, Path, RoutePlan};
pub use prepared::{LinkGraph, PreparedNetwork};
pub use scratch::SearchScratch;

/// Why a policy could not route a demand.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// The demand names a node that is not in the network.
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    /// Source and destination are not connected over up links (that the policy may use).
    #[error("no route from {src:?} to {dst:?}")]
    NoRoute {
        /// Source KM of the demand.
        src: String,
        /// Destination KM of the demand.
        dst: String,
    },
    /// Source and destination are connected, but no route can carry the demand.
    #[error("insufficient key capacity: {available} bit/s available")]
    InsufficientCapacity {
        /// The key rate (bit/s) the network could offer instead; see each policy for what it
        /// measures (widest single path, or max-flow).
        available: f64,
    },
    /// The snapshot is inconsistent (duplicate node, link to an unknown node, bad number).
    #[error("invalid network: {0}")]
    InvalidNetwork(String),
    /// The demand's numbers are negative or not finite.
    #[error("invalid demand: {0}")]
    InvalidDemand(String),
}

/// A routing policy: computes key relay routes for a demand over a network snapshot.
///
/// Implementations must be pure (same input, same plan) and must only return paths that
/// start at the demand's source, end at its destination, visit no node twice, and use only up
/// links, each joining the two nodes it is listed between.
pub trait RoutePolicy: Send + Sync {
    /// The name the policy is selected by in configuration (e.g. `"key-aware"`).
    fn name(&self) -> &'static str;

    /// Routes `demand` over a network already turned into a graph.
    fn route_prepared(
        &self,
        net: &PreparedNetwork<'_>,
        demand: &Demand,
    ) -> Result<RoutePlan, RouteError>;

    /// Precomputes on `net` whatever makes later [`route_prepared`](Self::route_prepared)
    /// calls on it for demands like `demand` (same rate and bits; the ends do not matter)
    /// faster, e.g. landmark distances, so that the first queries do not pay for it. Optional: policies also build such structures by themselves once a snapshot
    /// has answered enough queries. The default does nothing.
    fn prepare(&self, net: &PreparedNetwork<'_>, demand: &Demand) {
        let _ = (net, demand);
    }

    /// Routes `demand` over `net`, building the graph for this one call.
    fn route(&self, net: &KeyNetwork, demand: &Demand) -> Result<RoutePlan, RouteError> {
        self.route_prepared(&PreparedNetwork::new(net)?, demand)
    }
}

/// The route policies a controller may use, by name. The binary chooses the catalog and
/// hands it to the controller, whose core knows only [`RoutePolicy`].
#[derive(Clone, Copy)]
pub struct Catalog {
    /// Every policy's name.
    pub names: &'static [&'static str],
    /// The policy of a name, `None` for an unknown one.
    pub make: fn(&str) -> Option<Box<dyn RoutePolicy>>,
}

impl Catalog {
    /// The policy named `name`, or an error that lists the known names.
    pub fn policy(&self, name: &str) -> Result<Box<dyn RoutePolicy>, String> {
        (self.make)(name).ok_or_else(|| {
            format!(
                "unknown route policy {name} (known: {})",
                self.names.join(", ")
            )
        })
    }
}
