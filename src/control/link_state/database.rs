//! The link-state database: the newest advertisement of every node, and the domain it
//! describes (a [`KeyNetwork`] for the route policies, the SAE directory).

use std::collections::BTreeMap;

use qkdni_route_policy::{KeyNetwork, Link};

use super::lsa::Lsa;

/// One advertisement as this node holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub lsa: Lsa,
    /// When this node installed it (Unix ms): with the advertisement's `originated_ms`, how
    /// long it took to arrive.
    pub installed_ms: u64,
    /// The neighbour it came from (`None` for this node's own).
    pub from: Option<String>,
}

/// What an arriving advertisement is, against the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Newer than the copy held (or the first): installed.
    Installed,
    /// The copy held already.
    Known,
    /// Older than the copy held, which is returned (the sender should have it).
    Older(Box<Lsa>),
    /// Too old to keep.
    Expired,
}

/// Another QKDN's SAE as advertised: its node, its domain, and the gateways advertising it
/// with whether keys toward the node leave through them.
pub type ExternalReach = (String, String, Vec<(String, bool)>);

/// The newest advertisement of every node.
#[derive(Debug, Default, Clone)]
pub struct Database {
    entries: BTreeMap<String, Entry>,
}

impl Database {
    /// Installs `lsa` if it is newer than the copy held.
    pub fn consider(&mut self, lsa: Lsa, from: Option<&str>, now_ms: u64) -> Verdict {
        if lsa.expired(now_ms) {
            return Verdict::Expired;
        }
        if let Some(held) = self.entries.get(&lsa.origin) {
            if held.lsa.seq > lsa.seq {
                return Verdict::Older(Box::new(held.lsa.clone()));
            }
            if held.lsa.seq == lsa.seq {
                return Verdict::Known;
            }
        }
        self.entries.insert(
            lsa.origin.clone(),
            Entry {
                lsa,
                installed_ms: now_ms,
                from: from.map(str::to_owned),
            },
        );
        Verdict::Installed
    }

    /// Drops the advertisements too old to keep, except `own`'s; returns their origins.
    pub fn purge(&mut self, own: &str, now_ms: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(origin, e)| origin.as_str() != own && e.lsa.expired(now_ms))
            .map(|(origin, _)| origin.clone())
            .collect();
        for origin in &gone {
            self.entries.remove(origin);
        }
        gone
    }

    /// The advertisement of `origin`.
    pub fn get(&self, origin: &str) -> Option<&Entry> {
        self.entries.get(origin)
    }

    /// Every entry, by origin.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Every advertisement held.
    pub fn lsas(&self) -> Vec<Lsa> {
        self.entries.values().map(|e| e.lsa.clone()).collect()
    }

    /// (origin, seq) of every advertisement: two databases agree when these do.
    pub fn digest(&self) -> Vec<(String, u64)> {
        self.entries
            .values()
            .map(|e| (e.lsa.origin.clone(), e.lsa.seq))
            .collect()
    }

    /// The domain the database describes. A link counts only when both its ends advertise
    /// it, toward each other: an end that died (its neighbours report the link down) or a
    /// half-configured link is never routed over. Its key rate and stored key are the
    /// smaller of the two ends' figures; it is up only when both ends say so.
    pub fn network(&self) -> KeyNetwork {
        let mut net = KeyNetwork::new();
        for origin in self.entries.keys() {
            net.add_node(origin.clone());
        }
        for (origin, entry) in &self.entries {
            for link in &entry.lsa.links {
                // each link once: from the end whose name sorts first
                if origin >= &link.peer {
                    continue;
                }
                let Some(peer) = self.entries.get(&link.peer) else {
                    continue;
                };
                let Some(back) = peer
                    .lsa
                    .links
                    .iter()
                    .find(|l| l.id == link.id && &l.peer == origin)
                else {
                    continue;
                };
                net.add_link(Link {
                    id: link.id.clone(),
                    a: origin.clone(),
                    b: link.peer.clone(),
                    up: link.up && back.up,
                    key_rate_bps: link.key_rate_bps.min(back.key_rate_bps),
                    available_bits: link.available_bits.min(back.available_bits),
                    weight: None,
                });
            }
        }
        net
    }

    /// Other QKDNs' SAEs advertised by gateway nodes: SAE -> (its node, its domain, the
    /// gateways advertising it with whether keys toward the node leave through them).
    pub fn externals(&self) -> BTreeMap<String, ExternalReach> {
        let mut out: BTreeMap<String, ExternalReach> = BTreeMap::new();
        for e in self.entries.values() {
            for x in &e.lsa.externals {
                let entry = out
                    .entry(x.sae.clone())
                    .or_insert_with(|| (x.node.clone(), x.domain.clone(), Vec::new()));
                entry.2.push((e.lsa.origin.clone(), x.outbound));
            }
        }
        out
    }

    /// SAE -> the node whose KM serves it, as advertised.
    pub fn saes(&self) -> BTreeMap<String, String> {
        self.entries
            .values()
            .flat_map(|e| {
                e.lsa
                    .saes
                    .iter()
                    .map(move |sae| (sae.clone(), e.lsa.origin.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::lsa::LsaLink;
    use super::*;

    fn lsa(origin: &str, seq: u64, links: &[(&str, &str, bool)]) -> Lsa {
        Lsa {
            origin: origin.into(),
            seq,
            originated_ms: seq,
            links: links
                .iter()
                .map(|(id, peer, up)| LsaLink {
                    id: (*id).into(),
                    peer: (*peer).into(),
                    up: *up,
                    key_rate_bps: 1000.0,
                    available_bits: 5000.0,
                    qber: 0.01,
                })
                .collect(),
            saes: vec![format!("sae-{origin}")],
            kma: String::new(),
            qx_links: Vec::new(),
            externals: Vec::new(),
            speaks_for: Vec::new(),
        }
    }

    #[test]
    fn newer_replaces_older_and_older_is_answered_with_the_newer() {
        let mut db = Database::default();
        assert_eq!(
            db.consider(lsa("a", 10, &[]), Some("b"), 10),
            Verdict::Installed
        );
        assert_eq!(
            db.consider(lsa("a", 10, &[]), Some("c"), 11),
            Verdict::Known
        );
        assert_eq!(
            db.consider(lsa("a", 9, &[]), Some("c"), 11),
            Verdict::Older(Box::new(lsa("a", 10, &[])))
        );
        assert_eq!(
            db.consider(lsa("a", 12, &[]), Some("c"), 12),
            Verdict::Installed
        );
        assert_eq!(db.get("a").unwrap().from.as_deref(), Some("c"));
        assert_eq!(db.get("a").unwrap().installed_ms, 12);
    }

    #[test]
    fn a_link_counts_only_when_both_ends_advertise_it() {
        let mut db = Database::default();
        db.consider(
            lsa("a", 1, &[("ab", "b", true), ("ac", "c", true)]),
            None,
            1,
        );
        db.consider(lsa("b", 1, &[("ab", "a", true)]), None, 1);
        db.consider(lsa("c", 1, &[("ac", "a", false)]), None, 1);
        let net = db.network();
        assert_eq!(net.nodes, vec!["a", "b", "c"]);
        assert_eq!(net.links.len(), 2);
        assert!(net.links.iter().find(|l| l.id == "ab").unwrap().up);
        // one end down: down
        assert!(!net.links.iter().find(|l| l.id == "ac").unwrap().up);
        assert_eq!(db.saes().get("sae-c").map(String::as_str), Some("c"));
    }

    #[test]
    fn old_advertisements_are_purged_but_never_the_own() {
        let mut db = Database::default();
        db.consider(lsa("a", 1, &[]), None, 1);
        db.consider(lsa("b", 1, &[]), None, 1);
        let later = 2 + super::super::lsa::MAX_AGE_MS;
        assert_eq!(db.purge("a", later), vec!["b".to_string()]);
        assert_eq!(db.digest(), vec![("a".to_string(), 1)]);
        assert_eq!(db.consider(lsa("c", 1, &[]), None, later), Verdict::Expired);
    }
}
