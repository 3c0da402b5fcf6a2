//! Relay route tables: what every KM holds (from the agents' reports and the installs), what
//! it should hold for the active sessions, and the difference.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::ck::southbound::RouteChanges;
use super::instance::Instance;
use super::messages::Then;
use super::sessions::{InterworkingRole, Session, SessionState};
use super::state::State;
use super::topology::{AgentView, ForeignSae, NodeState, WeightedHop};

impl Instance {
    /// The KMs whose routes a job's sessions need.
    pub(super) fn relevant(&self, then: &Then) -> BTreeSet<String> {
        let nodes = |s: &Session| {
            let mut nodes: BTreeSet<String> = s
                .routed_paths()
                .iter()
                .flat_map(|p| p.nodes.iter().cloned())
                .collect();
            nodes.insert(s.src.clone());
            nodes
        };
        let of = |id: &Uuid| self.state.sessions.get(id).map(nodes).unwrap_or_default();
        match then {
            Then::Created { session, .. } => nodes(session),
            Then::PeerCommitted { segment, .. } => nodes(segment),
            Then::Agreed { id, previous, .. } => {
                let mut all = of(id);
                all.extend(nodes(previous));
                all
            }
            Then::Rerouted { changed, .. } => changed.iter().flat_map(|(id, _)| of(id)).collect(),
            Then::Nothing | Then::Deleted(_) | Then::PeerAborted { .. } | Then::Flushed(_) => {
                BTreeSet::new()
            }
        }
    }

    /// Merges agents' reports; returns whether any link changed up/down.
    pub(super) fn merge(
        &mut self,
        views: Vec<(String, Result<AgentView, String>)>,
        installs: u64,
    ) -> bool {
        // routes read while an install ran may predate it: keep what the instance knows
        let stale = installs != self.installs || !self.in_flight.is_empty();
        let topology = &mut self.state.topology;
        let before: BTreeMap<String, bool> = topology
            .links
            .iter()
            .map(|(id, l)| (id.clone(), l.up))
            .collect();
        let now = std::time::Instant::now();
        for (node, view) in views {
            match view {
                Ok(view) => {
                    self.usage.note(&view, now);
                    let known = topology
                        .nodes
                        .get(&node)
                        .map(|n| (n.next_hops.clone(), n.foreign_saes.clone()));
                    topology.update(&view);
                    if let (true, Some((hops, foreign))) = (stale, known) {
                        let info = topology.nodes.get_mut(&node).expect("just updated");
                        info.set_routes(hops);
                        info.foreign_saes = foreign;
                    }
                }
                Err(error) => {
                    tracing::debug!(%node, %error, "agent unreachable");
                    if let Some(n) = topology.nodes.get_mut(&node) {
                        n.reachable = false;
                    }
                }
            }
        }
        topology
            .links
            .iter()
            .any(|(id, l)| before.get(id).is_some_and(|up| *up != l.up))
    }

    /// The relay route and foreign SAE changes every reachable KM needs.
    pub(super) fn changes(&self) -> BTreeMap<String, RouteChanges> {
        let desired = desired(&self.state);
        let desired_saes = desired_foreign_saes(&self.state);
        let mut changes = BTreeMap::new();
        for (node, info) in &self.state.topology.nodes {
            if !info.reachable {
                continue;
            }
            let want = desired.get(node).cloned().unwrap_or_default();
            let mut change = RouteChanges::default();
            for (dest, hops) in &want {
                if info.next_hops.get(dest) != Some(hops) {
                    change.routes.insert(dest.clone(), Some(hops.clone()));
                }
            }
            for dest in info.next_hops.keys() {
                if !want.contains_key(dest) {
                    change.routes.insert(dest.clone(), None);
                }
            }
            let want_saes = desired_saes.get(node).cloned().unwrap_or_default();
            for (sae, entry) in &want_saes {
                if info.foreign_saes.get(sae) != Some(entry) {
                    change.foreign_saes.insert(sae.clone(), Some(entry.clone()));
                }
            }
            for sae in info.foreign_saes.keys() {
                if !want_saes.contains_key(sae) {
                    change.foreign_saes.insert(sae.clone(), None);
                }
            }
            if !change.is_empty() {
                changes.insert(node.clone(), change);
            }
        }
        changes
    }

    /// Records installed changes in the topology.
    pub(super) fn installed(&mut self, changes: BTreeMap<String, RouteChanges>) {
        self.installs += 1;
        self.c.event(
            "routes-installed",
            format!(
                "relay routes installed on {}",
                changes.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            None,
            None,
        );
        for (node, change) in changes {
            if let Some(info) = self.state.topology.nodes.get_mut(&node) {
                apply(info, change);
            }
        }
    }
}

/// Applies a KM's changes to what it holds.
fn apply(info: &mut NodeState, change: RouteChanges) {
    for (sae, entry) in change.foreign_saes {
        match entry {
            Some(entry) => info.foreign_saes.insert(sae, entry),
            None => info.foreign_saes.remove(&sae),
        };
    }
    let mut routes = info.next_hops.clone();
    for (dest, hops) in change.routes {
        match hops {
            Some(hops) => routes.insert(dest, hops),
            None => routes.remove(&dest),
        };
    }
    info.set_routes(routes);
}

/// The active sessions whose routes the KMs hold: the retired ones first (their routes stay
/// where no current session's route replaces them), then the current ones in creation order.
fn routed(state: &State) -> impl Iterator<Item = &Session> {
    let retired = state.retired.iter().map(|(_, s)| s);
    let current = state.order.iter().filter_map(|id| state.sessions.get(id));
    retired
        .chain(current)
        .filter(|s| s.state == SessionState::Active)
}

/// The relay routes every KM should hold for the active sessions: per node and
/// destination, every next hop with its weight (the session's key rate share on that
/// path, at least 1), the heaviest first. Where single-path sessions to one destination
/// meet, the later session's next hop wins.
fn desired(state: &State) -> BTreeMap<String, BTreeMap<String, Vec<WeightedHop>>> {
    let mut tables: BTreeMap<String, BTreeMap<String, Vec<WeightedHop>>> = BTreeMap::new();
    for session in routed(state) {
        let mut hops: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for path in session.routed_paths() {
            let weight = (path.share_bps.round() as u64).max(1);
            for hop in path.nodes.windows(2) {
                *hops
                    .entry(hop[0].clone())
                    .or_default()
                    .entry(hop[1].clone())
                    .or_default() += weight;
            }
        }
        for (node, next) in hops {
            let mut next: Vec<WeightedHop> = next
                .into_iter()
                .map(|(node, weight)| WeightedHop { node, weight })
                .collect();
            next.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| a.node.cmp(&b.node)));
            tables
                .entry(node)
                .or_default()
                .insert(session.dst.clone(), next);
        }
    }
    tables
}

/// The entries of other domains' SAEs every KM needs: the slave's at the master's KM of an
/// origin session; the masters' of the segments from one KM of the peer domain at every KM
/// of those segments (relays are checked against them). The peer relays by destination KM,
/// so keys of one segment's master may come in over another segment's crossing from the same
/// origin KM (the peer's route to the destination is the latest session's).
fn desired_foreign_saes(state: &State) -> BTreeMap<String, BTreeMap<String, ForeignSae>> {
    let mut wanted: BTreeMap<String, BTreeMap<String, ForeignSae>> = BTreeMap::new();
    // segments by their origin KM in the peer domain: their masters, and their KMs here
    let mut from: BTreeMap<(String, String), (BTreeSet<String>, BTreeSet<String>)> =
        BTreeMap::new();
    for session in routed(state) {
        let Some(iw) = session.interworking.as_ref() else {
            continue;
        };
        let entry = ForeignSae {
            node: iw.peer_km.clone(),
            domain: iw.peer_domain.clone(),
        };
        match iw.role {
            InterworkingRole::Origin => {
                wanted
                    .entry(session.src.clone())
                    .or_default()
                    .insert(session.slave_sae.clone(), entry);
            }
            InterworkingRole::Segment => {
                let (masters, nodes) = from
                    .entry((iw.peer_domain.clone(), iw.peer_km.clone()))
                    .or_default();
                masters.insert(session.master_sae.clone());
                nodes.extend(session.path.iter().cloned());
            }
        }
    }
    for ((domain, origin), (masters, nodes)) in from {
        for node in nodes {
            let entries = wanted.entry(node).or_default();
            for master in &masters {
                entries.insert(
                    master.clone(),
                    ForeignSae {
                        node: origin.clone(),
                        domain: domain.clone(),
                    },
                );
            }
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::sessions::Interworking;
    use std::time::Instant;

    fn segment(path: &[&str]) -> Session {
        let nodes: Vec<String> = path.iter().map(|n| n.to_string()).collect();
        Session {
            id: Uuid::from_u128(7),
            master_sae: "sae-b1-1".into(),
            slave_sae: "sae-a1-1".into(),
            src: nodes[0].clone(),
            dst: nodes[nodes.len() - 1].clone(),
            rate_bps: 1000.0,
            state: SessionState::Active,
            path: nodes.clone(),
            links: Vec::new(),
            paths: vec![crate::control::sessions::SessionPath {
                nodes,
                links: Vec::new(),
                share_bps: 1000.0,
            }],
            history: Vec::new(),
            interworking: Some(Interworking {
                peer_domain: "B".into(),
                role: InterworkingRole::Segment,
                transaction: Uuid::from_u128(1),
                local_gateway: path[0].into(),
                peer_gateway: "gb1".into(),
                qx_link: "qx1".into(),
                peer_km: "b1".into(),
            }),
            on_demand: false,
        }
    }

    fn state(current: Session, retired: Vec<Session>) -> State {
        let mut state = State {
            topology: Default::default(),
            sessions: BTreeMap::new(),
            order: Vec::new(),
            interworking: Default::default(),
            retired: Vec::new(),
        };
        state.put(current);
        for s in retired {
            state.retire(s);
        }
        state
    }

    #[test]
    fn a_replaced_segment_keeps_its_entry_and_routes_where_the_new_one_does_not_go() {
        let old = segment(&["ga1", "a2", "a1"]);
        let new = segment(&["ga2", "a3", "a1"]);
        let mut state = state(new, vec![old]);
        let saes = desired_foreign_saes(&state);
        for node in ["ga1", "a2", "ga2", "a3", "a1"] {
            assert_eq!(saes[node]["sae-b1-1"].node, "b1", "{node}");
        }
        let routes = desired(&state);
        assert_eq!(routes["ga1"]["a1"][0].node, "a2");
        // where both go, the current route wins
        assert_eq!(routes["ga2"]["a1"][0].node, "a3");
        // until its time is up; then only the current route is left
        assert!(!state.prune_retired(Instant::now()));
        assert!(state.prune_retired(Instant::now() + super::super::state::RETIRED_FOR));
        let saes = desired_foreign_saes(&state);
        assert!(!saes.contains_key("ga1") && !saes.contains_key("a2"));
        assert!(!desired(&state).contains_key("ga1"));
    }

    #[test]
    fn masters_from_one_peer_km_are_known_on_every_crossing_from_it() {
        // two sessions from b1 (two masters) cross at ga1 and at ga2: the peer relays to a1
        // by destination, so either master's keys may come in over either crossing
        let first = segment(&["ga1", "a2", "a1"]);
        let mut second = segment(&["ga2", "a3", "a1"]);
        second.id = Uuid::from_u128(8);
        second.master_sae = "sae-b1-2".into();
        let mut other = segment(&["ga2", "a4"]);
        other.id = Uuid::from_u128(9);
        other.master_sae = "sae-b4-1".into();
        other.interworking.as_mut().unwrap().peer_km = "b4".into();
        let mut state = state(first, Vec::new());
        state.put(second);
        state.put(other);
        let saes = desired_foreign_saes(&state);
        for node in ["ga1", "a2", "ga2", "a3", "a1"] {
            for master in ["sae-b1-1", "sae-b1-2"] {
                assert_eq!(saes[node][master].node, "b1", "{node} {master}");
            }
        }
        // a master from another KM of the peer is known only on its own segment
        assert_eq!(saes["ga2"]["sae-b4-1"].node, "b4");
        assert!(!saes["ga1"].contains_key("sae-b4-1"));
        assert!(!saes["a4"].contains_key("sae-b1-1"));
    }

    #[test]
    fn a_deleted_session_leaves_nothing_behind() {
        let old = segment(&["ga1", "a2", "a1"]);
        let new = segment(&["ga2", "a3", "a1"]);
        let id = new.id;
        let mut state = state(new, vec![old]);
        state.take(id);
        assert!(desired(&state).is_empty());
        assert!(desired_foreign_saes(&state).is_empty());
    }
}
