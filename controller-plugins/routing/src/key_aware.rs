//! `key-aware`: routes only over links that can serve the demand, preferring well-stocked
//! links.

use qkdni_route_policy::{
    Demand, LandmarkKey, Link, PreparedNetwork, RouteError, RoutePlan, RoutePolicy,
};

use crate::{alt, no_route, search, single_path};

/// Key-aware single path.
///
/// A link *serves* a demand when its key rate is at least the demanded rate, its stored key
/// at least the demanded bits, and it has any key at all (rate or stock above 0). Only
/// serving up links are used. Among those, the least-cost path is taken (Dijkstra), with
///
/// ```text
/// cost = 1 + 2 * (b / (available_bits + b) + r / (key_rate_bps + r))
/// b = max(demand.bits, 256)      r = max(demand.rate_bps, 1)
/// ```
///
/// Each fraction is in (0, 1): near 0 for a link with far more key (rate, stock) than the
/// demand, 1/2 for one that just meets it, near 1 for one with almost none. So a link that
/// just meets the demand costs 3, as much as three hops over well-stocked links (cost near
/// 1 each); a hop never costs less than 1, so short paths still win among equals.
///
/// The search is ALT (A* with landmark lower bounds) once the snapshot has landmarks for the
/// demand's class, Dijkstra before. Costs change with the demand, so landmarks are computed
/// per class: the demanded bits and rate each rounded down to a power of 2^(1/4) (0 below
/// 1), with the cost and serving links of a demand of exactly those numbers. A demand of the
/// class can only use fewer links (it asks for more), each at a cost at least as high (the
/// cost grows with bits and rate), so the bounds stay lower bounds for it.
///
/// Errors: `NoRoute` when the ends are not connected over up links at all;
/// `InsufficientCapacity { available }` when they are, but not over serving links, with
/// `available` the key rate of the widest single path (its smallest link key rate).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyAware;

/// Whether `link` can serve `demand` (see [`KeyAware`]).
pub fn serves(link: &Link, demand: &Demand) -> bool {
    serves_with(
        link.key_rate_bps,
        link.available_bits,
        demand.rate_bps,
        demand.bits,
    )
}

/// Whether a link of key rate `have_bps` and stored key `stock` serves a demand of
/// `rate_bps` and `bits`.
fn serves_with(have_bps: f64, stock: f64, rate_bps: f64, bits: f64) -> bool {
    have_bps >= rate_bps && stock >= bits && (have_bps > 0.0 || stock > 0.0)
}

/// The key-aware cost of `link` for `demand` (see [`KeyAware`]).
pub fn cost(link: &Link, demand: &Demand) -> f64 {
    cost_with(link.key_rate_bps, link.available_bits, demand)
}

/// The key-aware cost of a link of key rate `have_bps` and stored key `stock`.
fn cost_with(have_bps: f64, stock: f64, demand: &Demand) -> f64 {
    cost_for(
        have_bps,
        stock,
        demand.bits.max(256.0),
        demand.rate_bps.max(1.0),
    )
}

fn cost_for(have_bps: f64, stock: f64, b: f64, r: f64) -> f64 {
    1.0 + 2.0 * (b / (stock + b) + r / (have_bps + r))
}

/// The landmark class of demands (see [`KeyAware`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DemandClass {
    bits: f64,
    rate_bps: f64,
    key: LandmarkKey,
}

impl DemandClass {
    /// The class of `demand`.
    pub(crate) fn of(demand: &Demand) -> Self {
        let (bits_code, bits) = round_down(demand.bits);
        let (rate_code, rate_bps) = round_down(demand.rate_bps);
        Self {
            bits,
            rate_bps,
            key: (
                "key-aware",
                (u64::from(bits_code) << 32) | u64::from(rate_code),
            ),
        }
    }

    /// The landmark cost of `link`: the key-aware cost for a demand of the class's bits and
    /// rate if the link serves such a demand, infinite if not. Taken a millionth of a
    /// millionth lower, so that rounding cannot lift it above a demand's cost.
    pub(crate) fn lower(&self, link: &Link) -> f64 {
        let demand = Demand {
            src: String::new(),
            dst: String::new(),
            rate_bps: self.rate_bps,
            bits: self.bits,
        };
        if serves(link, &demand) {
            cost(link, &demand) * (1.0 - 1e-12)
        } else {
            f64::INFINITY
        }
    }
}

/// `x` rounded down to a power of 2^(1/4), and a code for it (distinct for distinct
/// powers); `(0, 0.0)` for `x` below 1.
fn round_down(x: f64) -> (u32, f64) {
    if x.is_nan() || x < 1.0 {
        return (0, 0.0);
    }
    let power = |e: i32| (f64::from(e) / 16.0).exp2();
    let mut e = (x.log2() * 16.0).floor() as i32;
    while e > 0 && power(e) > x {
        e -= 1;
    }
    (e as u32 + 1, power(e))
}

impl RoutePolicy for KeyAware {
    fn name(&self) -> &'static str {
        "key-aware"
    }

    fn route_prepared(
        &self,
        net: &PreparedNetwork<'_>,
        demand: &Demand,
    ) -> Result<RoutePlan, RouteError> {
        let (src, dst) = net.endpoints(demand)?;
        let class = DemandClass::of(demand);
        let csr = net.csr();
        let found = alt::least_cost(
            net,
            src,
            dst,
            class.key,
            |l| class.lower(l),
            |slot| {
                let (have, stock) = (csr.key_rate_bps(slot), csr.available_bits(slot));
                serves_with(have, stock, demand.rate_bps, demand.bits)
                    .then(|| cost_with(have, stock, demand))
            },
        );
        match found {
            Some(edges) => Ok(single_path(net, src, &edges, demand)),
            None => match search::widest_rate(net, src, dst) {
                Some(available) => Err(RouteError::InsufficientCapacity { available }),
                None => Err(no_route(demand)),
            },
        }
    }

    fn prepare(&self, net: &PreparedNetwork<'_>, demand: &Demand) {
        let class = DemandClass::of(demand);
        net.prepare_landmarks(class.key, |l| class.lower(l));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use qkdni_route_policy::testing::arb_network_and_demand;
    use qkdni_route_policy::KeyNetwork;

    use super::*;
    use crate::checks::{assert_valid_plan, connected};

    /// a-b-d over well-stocked links, a-d direct over a link with little key.
    fn net() -> KeyNetwork {
        let mut net = KeyNetwork::new();
        for id in ["a", "b", "d"] {
            net.add_node(id);
        }
        for (id, a, b, rate, bits) in [
            ("ad", "a", "d", 100.0, 1000.0),
            ("ab", "a", "b", 1e6, 1e9),
            ("bd", "b", "d", 1e6, 1e9),
        ] {
            let mut link = Link::new(id, a, b, rate);
            link.available_bits = bits;
            net.add_link(link);
        }
        net
    }

    #[test]
    fn prefers_well_stocked_links_and_avoids_thin_ones() {
        let net = net();
        let plan = KeyAware
            .route(&net, &Demand::new("a", "d", 100.0, 1000.0))
            .unwrap();
        assert_eq!(plan.paths[0].links, ["ab", "bd"]);
        let plan = KeyAware
            .route(&net, &Demand::new("a", "d", 1e5, 1000.0))
            .unwrap();
        assert_eq!(plan.paths[0].links, ["ab", "bd"]);
        let mut stocked = net.clone();
        stocked.links[0].key_rate_bps = 1e6;
        stocked.links[0].available_bits = 1e9;
        let plan = KeyAware
            .route(&stocked, &Demand::new("a", "d", 100.0, 1000.0))
            .unwrap();
        assert_eq!(plan.paths[0].links, ["ad"]);
    }

    #[test]
    fn reports_widest_path_when_nothing_serves() {
        let net = net();
        let err = KeyAware
            .route(&net, &Demand::new("a", "d", 1e7, 0.0))
            .unwrap_err();
        assert_eq!(err, RouteError::InsufficientCapacity { available: 1e6 });
    }

    proptest! {
        #[test]
        fn uses_only_serving_links_when_it_can((net, demand) in arb_network_and_demand(2..30)) {
            let serving = connected(&net, &demand, |l| l.up && serves(l, &demand));
            match KeyAware.route(&net, &demand) {
                Ok(plan) => {
                    prop_assert!(serving);
                    prop_assert_eq!(plan.paths.len(), 1);
                    assert_valid_plan(&net, &demand, &plan);
                    for id in &plan.paths[0].links {
                        let link = net.links.iter().find(|l| &l.id == id).unwrap();
                        prop_assert!(link.key_rate_bps >= demand.rate_bps, "{id} too slow");
                        prop_assert!(serves(link, &demand));
                    }
                }
                Err(RouteError::NoRoute { .. }) => {
                    prop_assert!(!connected(&net, &demand, |l| l.up));
                }
                Err(RouteError::InsufficientCapacity { available }) => {
                    prop_assert!(!serving);
                    prop_assert!(connected(&net, &demand, |l| l.up));
                    prop_assert!(connected(&net, &demand, |l| l.up && l.key_rate_bps >= available));
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
