//! The link-state protocol of one node: originating its own advertisement, flooding, the
//! database exchange with a neighbour whose link comes up, aging, and the routes recomputed
//! on every change. Transport-agnostic: the KM floods over its KMA server (mutual TLS,
//! [`crate::km::local_control`]); the benchmark over channels.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use qkdni_route_policy::{Catalog, RoutePolicy};
use tokio::sync::watch;

use super::database::{Database, Entry, Verdict};
use super::lsa::{now_ms, External, Flood, Lsa, LsaLink, QxAdvert, REFRESH_MS};
use super::routes;
use crate::km::agent::NextHops;

/// How a node sends a flood to a neighbour and gets its answer.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, neighbour: &str, flood: Flood) -> BoxFuture<'static, Result<Flood, String>>;
}

/// Figures of the protocol at one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Floods sent to neighbours, and their JSON bytes.
    pub floods_sent: u64,
    pub bytes_sent: u64,
    /// Floods received from neighbours.
    pub floods_received: u64,
    /// Floods a neighbour did not take (unreachable, refused).
    pub floods_failed: u64,
    /// Own advertisements originated.
    pub originated: u64,
    /// Route computations, and when the last one ran (Unix ms).
    pub route_runs: u64,
    pub last_route_run_ms: u64,
}

use serde::Serialize;

/// Another QKDN's SAE as the domain's link state shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Foreign {
    /// The node (in `domain`) whose KM serves it.
    pub node: String,
    pub domain: String,
    /// The gateway node of this domain the keys cross.
    pub gateway: String,
}

/// What this node knows of its own links.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Local {
    pub links: Vec<LsaLink>,
    pub saes: Vec<String>,
    /// Base URL of this node's KMA server.
    pub kma: String,
    /// A gateway node's Qx links.
    pub qx_links: Vec<QxAdvert>,
    /// Other QKDNs' SAEs reachable through this gateway node.
    pub externals: Vec<External>,
    /// The peer QKDNs this node speaks Cxi with for the domain.
    pub speaks_for: Vec<String>,
}

struct Inner {
    db: Database,
    /// Neighbours over links that are up, and whether a database exchange with them is due.
    neighbours: BTreeMap<String, bool>,
    policy: Box<dyn RoutePolicy>,
    routes: BTreeMap<String, NextHops>,
    saes: BTreeMap<String, String>,
    /// Other QKDNs' SAEs reachable through a gateway: SAE -> (node, domain, gateway).
    foreign: BTreeMap<String, Foreign>,
    /// Hops of the primary path toward every reachable node.
    hops: BTreeMap<String, u32>,
    local: Option<Local>,
    last_seq: u64,
    stats: Stats,
}

/// The link-state routing of one node of a distributed QKDN.
pub struct LinkState {
    own: String,
    catalog: Catalog,
    transport: Arc<dyn Transport>,
    inner: Mutex<Inner>,
    /// Bumped on every change of the database or the routes.
    changes: watch::Sender<u64>,
}

impl LinkState {
    /// The protocol of node `own`, routing with `policy` (a name of `catalog`).
    pub fn new(
        own: &str,
        catalog: Catalog,
        policy: &str,
        transport: Arc<dyn Transport>,
    ) -> Result<Arc<Self>, String> {
        let policy = catalog.policy(policy)?;
        Ok(Arc::new(Self {
            own: own.to_owned(),
            catalog,
            transport,
            inner: Mutex::new(Inner {
                db: Database::default(),
                neighbours: BTreeMap::new(),
                policy,
                routes: BTreeMap::new(),
                saes: BTreeMap::new(),
                foreign: BTreeMap::new(),
                hops: BTreeMap::new(),
                local: None,
                last_seq: 0,
                stats: Stats::default(),
            }),
            changes: watch::channel(0).0,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's name.
    pub fn own(&self) -> &str {
        &self.own
    }

    /// Takes this node's current links and SAEs: neighbours whose link came up get a
    /// database exchange; a material change or a due refresh originates a new advertisement
    /// and floods it; too old advertisements are dropped. Call it on every change of a link
    /// and about once a second.
    pub fn update(self: &Arc<Self>, local: Local) {
        let now = now_ms();
        let mut sends: Vec<(String, Flood)> = Vec::new();
        {
            let mut inner = self.lock();
            let up: BTreeSet<String> = local
                .links
                .iter()
                .filter(|l| l.up)
                .map(|l| l.peer.clone())
                .collect();
            inner.neighbours.retain(|n, _| up.contains(n));
            for n in &up {
                inner.neighbours.entry(n.clone()).or_insert(true);
            }
            let mut changed = !inner.db.purge(&self.own, now).is_empty();
            let due = match (&inner.local, inner.db.get(&self.own)) {
                (Some(last), Some(entry)) => {
                    last.links.len() != local.links.len()
                        || lsa_of(&self.own, 0, now, &local)
                            .differs_materially(&lsa_of(&self.own, 0, now, last))
                        || now.saturating_sub(entry.lsa.originated_ms) >= REFRESH_MS
                }
                _ => true,
            };
            if due {
                let seq = now.max(inner.last_seq + 1);
                inner.last_seq = seq;
                let lsa = lsa_of(&self.own, seq, now, &local);
                inner.db.consider(lsa.clone(), None, now);
                inner.stats.originated += 1;
                changed = true;
                for n in inner.neighbours.keys() {
                    sends.push((
                        n.clone(),
                        Flood {
                            lsas: vec![lsa.clone()],
                            exchange: false,
                        },
                    ));
                }
            }
            inner.local = Some(local);
            let exchanges: Vec<String> = inner
                .neighbours
                .iter()
                .filter(|(_, due)| **due)
                .map(|(n, _)| n.clone())
                .collect();
            for n in exchanges {
                inner.neighbours.insert(n.clone(), false);
                sends.retain(|(to, _)| to != &n);
                sends.push((
                    n,
                    Flood {
                        lsas: inner.db.lsas(),
                        exchange: true,
                    },
                ));
            }
            if changed {
                self.recompute(&mut inner);
            }
        }
        for (to, flood) in sends {
            self.send(to, flood);
        }
    }

    /// Takes a flood from neighbour `from` and returns the answer: the advertisements this
    /// node holds newer (or, for a database exchange, also those `from` lacks). What is new
    /// here is flooded on to the other neighbours.
    pub fn receive(self: &Arc<Self>, from: &str, flood: Flood) -> Flood {
        let sent: BTreeSet<String> = flood.lsas.iter().map(|l| l.origin.clone()).collect();
        let exchange = flood.exchange;
        let mut answer = self.install(from, flood.lsas, |inner| {
            inner.stats.floods_received += 1;
        });
        if exchange {
            let mut inner = self.lock();
            answer.extend(
                inner
                    .db
                    .entries()
                    .filter(|e| !sent.contains(&e.lsa.origin))
                    .map(|e| e.lsa.clone()),
            );
            // the neighbour has our database now: no exchange due with it
            if let Some(due) = inner.neighbours.get_mut(from) {
                *due = false;
            }
        }
        Flood {
            lsas: answer,
            exchange: false,
        }
    }

    /// Installs what neighbour `from` sent (a flood, or the answer to one of ours): the new
    /// ones are flooded on to the other neighbours and the routes recomputed; an own
    /// advertisement newer than the one held (from before a restart) makes this node
    /// originate past it. Returns the newer copies held here of what `from` sent.
    fn install(
        self: &Arc<Self>,
        from: &str,
        lsas: Vec<Lsa>,
        count: impl FnOnce(&mut Inner),
    ) -> Vec<Lsa> {
        let now = now_ms();
        let mut newer = Vec::new();
        let mut onward = Vec::new();
        let mut own_stale = false;
        {
            let mut inner = self.lock();
            count(&mut inner);
            for lsa in lsas {
                if lsa.origin == self.own {
                    let held = inner.db.get(&self.own).map_or(0, |e| e.lsa.seq);
                    if lsa.seq > held {
                        inner.last_seq = inner.last_seq.max(lsa.seq);
                        own_stale = true;
                    } else if lsa.seq < held {
                        newer.extend(inner.db.get(&self.own).map(|e| e.lsa.clone()));
                    }
                    continue;
                }
                match inner.db.consider(lsa.clone(), Some(from), now) {
                    Verdict::Installed => onward.push(lsa),
                    Verdict::Older(held) => newer.push(*held),
                    Verdict::Known | Verdict::Expired => {}
                }
            }
            if !onward.is_empty() {
                self.recompute(&mut inner);
            }
        }
        if own_stale {
            if let Some(local) = self.lock().local.clone() {
                self.force_originate(local);
            }
        }
        self.flood_onward(Some(from), onward);
        newer
    }

    fn force_originate(self: &Arc<Self>, local: Local) {
        {
            let mut inner = self.lock();
            // forget the own entry so that `update` originates
            inner.local = None;
        }
        self.update(local);
    }

    /// Floods `lsas` to every neighbour but `except`.
    fn flood_onward(self: &Arc<Self>, except: Option<&str>, lsas: Vec<Lsa>) {
        if lsas.is_empty() {
            return;
        }
        let neighbours: Vec<String> = self
            .lock()
            .neighbours
            .keys()
            .filter(|n| Some(n.as_str()) != except)
            .cloned()
            .collect();
        for n in neighbours {
            self.send(
                n,
                Flood {
                    lsas: lsas.clone(),
                    exchange: false,
                },
            );
        }
    }

    fn send(self: &Arc<Self>, to: String, flood: Flood) {
        let bytes = serde_json::to_vec(&flood).map_or(0, |b| b.len() as u64);
        {
            let mut inner = self.lock();
            inner.stats.floods_sent += 1;
            inner.stats.bytes_sent += bytes;
        }
        let sending = self.transport.send(&to, flood);
        let this = self.clone();
        tokio::spawn(async move {
            match sending.await {
                Ok(answer) => {
                    if !answer.lsas.is_empty() {
                        // what the neighbour holds newer; its own newer copies are not
                        // answered back (it has them)
                        this.install(&to, answer.lsas, |_| {});
                    }
                }
                Err(error) => {
                    tracing::debug!(neighbour = %to, %error, "flood not taken");
                    let mut inner = this.lock();
                    inner.stats.floods_failed += 1;
                    // resynchronize with it as soon as its link is (still) up
                    if let Some(due) = inner.neighbours.get_mut(&to) {
                        *due = true;
                    }
                }
            }
        });
    }

    fn recompute(&self, inner: &mut Inner) {
        let net = inner.db.network();
        let (mut routes, hops) = routes::compute(&self.own, &net, inner.policy.as_ref());
        let mut saes = inner.db.saes();
        // another QKDN's SAE: through the nearest gateway advertising it (fewest hops, then
        // name); none when this node is one of them (its own interworking route applies)
        let mut foreign = BTreeMap::new();
        for (sae, (node, domain, advertisers)) in inner.db.externals() {
            // keys toward the node leave through an outbound advertiser; an SAE that only
            // comes in (the peer's session) is known without a route
            let outbound: Vec<&String> = advertisers
                .iter()
                .filter(|(_, out)| *out)
                .map(|(g, _)| g)
                .collect();
            let candidates: Vec<&String> = match outbound.is_empty() {
                true => advertisers.iter().map(|(g, _)| g).collect(),
                false => outbound.clone(),
            };
            let gateway = if candidates.iter().any(|g| **g == self.own) {
                Some(self.own.clone())
            } else {
                candidates
                    .iter()
                    .filter(|g| routes.contains_key(**g))
                    .min_by_key(|g| (hops.get(**g).copied().unwrap_or(u32::MAX), (**g).clone()))
                    .map(|g| (*g).clone())
            };
            let Some(gateway) = gateway else {
                continue;
            };
            if gateway != self.own && !outbound.is_empty() {
                if let Some(route) = routes.get(&gateway).cloned() {
                    routes.entry(node.clone()).or_insert(route);
                }
            }
            saes.entry(sae.clone()).or_insert_with(|| node.clone());
            foreign.insert(
                sae,
                Foreign {
                    node,
                    domain,
                    gateway,
                },
            );
        }
        inner.routes = routes;
        inner.saes = saes;
        inner.foreign = foreign;
        inner.hops = hops;
        inner.stats.route_runs += 1;
        inner.stats.last_route_run_ms = now_ms();
        self.changes.send_modify(|n| *n += 1);
    }

    /// The next hops toward every reachable node.
    pub fn routes(&self) -> BTreeMap<String, NextHops> {
        self.lock().routes.clone()
    }

    /// Hops of the primary path toward `dest` (0 for this node).
    pub fn hops_to(&self, dest: &str) -> Option<u32> {
        if dest == self.own {
            return Some(0);
        }
        self.lock().hops.get(dest).copied()
    }

    /// The next hops toward `dest`, if it is reachable.
    pub fn next_hops(&self, dest: &str) -> Option<NextHops> {
        self.lock().routes.get(dest).cloned()
    }

    /// The node serving `sae`, as advertised.
    pub fn sae_node(&self, sae: &str) -> Option<String> {
        self.lock().saes.get(sae).cloned()
    }

    /// The QKDN of `sae` when it is another QKDN's SAE reachable through a gateway.
    pub fn sae_domain(&self, sae: &str) -> Option<String> {
        self.lock().foreign.get(sae).map(|f| f.domain.clone())
    }

    /// Other QKDNs' SAEs reachable through the domain's gateways.
    pub fn foreign(&self) -> BTreeMap<String, Foreign> {
        self.lock().foreign.clone()
    }

    /// The KMA base URL node `node` advertises.
    pub fn kma_of(&self, node: &str) -> Option<String> {
        self.lock()
            .db
            .get(node)
            .map(|e| e.lsa.kma.clone())
            .filter(|k| !k.is_empty())
    }

    /// The domain as the database describes it.
    pub fn network(&self) -> qkdni_route_policy::KeyNetwork {
        self.lock().db.network()
    }

    /// The node speaking Cxi for the domain (nearest first) and its KMA URL.
    pub fn speaker(&self) -> Option<(String, String)> {
        let inner = self.lock();
        inner
            .db
            .entries()
            .filter(|e| !e.lsa.speaks_for.is_empty() && !e.lsa.kma.is_empty())
            .filter(|e| e.lsa.origin == self.own || inner.routes.contains_key(&e.lsa.origin))
            .min_by_key(|e| {
                let hops = match e.lsa.origin == self.own {
                    true => 0,
                    false => inner.hops.get(&e.lsa.origin).copied().unwrap_or(u32::MAX),
                };
                (hops, e.lsa.origin.clone())
            })
            .map(|e| (e.lsa.origin.clone(), e.lsa.kma.clone()))
    }

    /// Whether node `node` speaks Cxi for the domain.
    pub fn is_speaker(&self, node: &str) -> bool {
        self.lock()
            .db
            .get(node)
            .is_some_and(|e| !e.lsa.speaks_for.is_empty())
    }

    /// The gateway nodes with a Qx link to `domain` (up or not), nearest first.
    pub fn gateways_to(&self, domain: &str) -> Vec<(String, Vec<QxAdvert>)> {
        let inner = self.lock();
        let hops = |n: &str| match n == self.own {
            true => 0,
            false => inner.hops.get(n).copied().unwrap_or(u32::MAX),
        };
        // only border nodes this node can reach: a dead or cut-off one keeps advertising
        // its Qx links until its advertisement ages out
        let mut out: Vec<(String, Vec<QxAdvert>)> = inner
            .db
            .entries()
            .filter(|e| e.lsa.origin == self.own || inner.routes.contains_key(&e.lsa.origin))
            .filter_map(|e| {
                let qx: Vec<QxAdvert> = e
                    .lsa
                    .qx_links
                    .iter()
                    .filter(|q| q.peer_domain == domain)
                    .cloned()
                    .collect();
                (!qx.is_empty()).then(|| (e.lsa.origin.clone(), qx))
            })
            .collect();
        out.sort_by_key(|(n, _)| (hops(n), n.clone()));
        out
    }

    /// Every SAE advertised and its node.
    pub fn saes(&self) -> BTreeMap<String, String> {
        self.lock().saes.clone()
    }

    /// The database, by origin.
    pub fn database(&self) -> Vec<Entry> {
        self.lock().db.entries().cloned().collect()
    }

    /// (origin, seq) of every advertisement held.
    pub fn digest(&self) -> Vec<(String, u64)> {
        self.lock().db.digest()
    }

    /// Neighbours over up links.
    pub fn neighbours(&self) -> Vec<String> {
        self.lock().neighbours.keys().cloned().collect()
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// The route policy's name.
    pub fn policy(&self) -> &'static str {
        self.lock().policy.name()
    }

    /// Routes with policy `name` from now on (recomputed at once).
    pub fn set_policy(&self, name: &str) -> Result<(), String> {
        let policy = self.catalog.policy(name)?;
        let mut inner = self.lock();
        if inner.policy.name() != policy.name() {
            inner.policy = policy;
            self.recompute(&mut inner);
        }
        Ok(())
    }

    /// Follows changes of the database and routes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn lsa_of(own: &str, seq: u64, now: u64, local: &Local) -> Lsa {
    let mut links = local.links.clone();
    links.sort_by(|a, b| a.id.cmp(&b.id));
    let mut saes = local.saes.clone();
    saes.sort();
    let mut qx_links = local.qx_links.clone();
    qx_links.sort_by(|a, b| a.id.cmp(&b.id));
    let mut externals = local.externals.clone();
    externals.sort();
    Lsa {
        origin: own.to_owned(),
        seq,
        originated_ms: now,
        links,
        saes,
        kma: local.kma.clone(),
        qx_links,
        externals,
        speaks_for: local.speaks_for.clone(),
    }
}
