//! Policy-based control at the controller (ITU-T Y.3818 clause 7, "shares QKDN resources
//! based on QoS between QKDNs"): the admission of new sessions by QoS class.
//!
//! The classes are the KM's ([`crate::km::qos::policy`]), configured under
//! `qkdni-controller` `controller/qos`. A session's class is its application pair's, else its
//! peer domain's, else the default class; a session of a peer domain uses the class its
//! prepare names (when the peer's agreement exposes it), else the one this domain maps the
//! peer to. A session is admitted when, on every QKD link of its route, the guaranteed rates
//! held there plus what its class's guaranteed rate puts on the link stay within the link's
//! key rate (as the controller last polled it); otherwise it is refused, naming the link and
//! the figures. A session puts its whole guarantee on every link of a single path; a
//! multipath plan puts on each link the part of the guarantee its paths through that link
//! carry (their share of the session's rate). A class with no guaranteed rate is always
//! admitted.
//!
//! Reservations follow the sessions: [`Admission::sync`] (after every input of the instance)
//! moves a reservation to its session's current route and releases those whose session has
//! ended, expired or was never installed; a reroute is admitted again on its new route.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::topology::Topology;
use crate::km::qos::policy::{ClassSpec, QosPolicy};

/// How long a reservation of a session not installed yet (being installed, or being agreed
/// with a peer) holds before it is released.
pub const PENDING_FOR: Duration = Duration::from_secs(60);

/// What a session holds on the links of its route.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Its class.
    pub class: String,
    /// The class's guaranteed rate when it was admitted (bit/s).
    pub guaranteed_bps: u64,
    /// The QKD links of its route (every path of its plan), each with the part of the
    /// session's keys that cross it.
    pub links: Shares,
    /// When it was admitted or last seen installed.
    pub seen: Instant,
}

/// Why a session is not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmissionRefusal {
    /// A link of the route cannot carry one more guarantee (`guaranteed_bps`: the part of
    /// the class's guarantee the route puts on that link).
    #[error(
        "QoS admission refused on link {link}: its key rate is {rate_bps:.0} bit/s, the sessions admitted on it are guaranteed {reserved_bps} bit/s and class {class} needs {guaranteed_bps} bit/s more"
    )]
    LinkFull {
        link: String,
        rate_bps: f64,
        reserved_bps: u64,
        class: String,
        guaranteed_bps: u64,
    },
    /// The class a peer asked for is not one its agreement exposes.
    #[error("QoS class {class} is not exposed to {domain} (exposed: {exposed})")]
    NotExposed {
        class: String,
        domain: String,
        exposed: String,
    },
    /// The class a peer asked for is not configured here.
    #[error("QoS class {0} is not configured in this domain")]
    UnknownClass(String),
}

/// The QKD links of a route plan, each with the part (0 to 1) of the session's keys that
/// cross it.
pub type Shares = BTreeMap<String, f64>;

/// The links of the route plan `paths`: every link of a single path carries all of the
/// session's keys; a link of a multipath plan carries the shares of the paths through it
/// (equal shares when the plan gives none).
pub fn links_of(paths: &[super::sessions::SessionPath]) -> Shares {
    let total: f64 = paths.iter().map(|p| p.share_bps.max(0.0)).sum();
    let mut shares = Shares::new();
    for path in paths {
        let part = if total > 0.0 {
            path.share_bps.max(0.0) / total
        } else {
            1.0 / paths.len() as f64
        };
        for link in path.links.iter().collect::<BTreeSet<_>>() {
            let share = shares.entry(link.clone()).or_insert(0.0);
            *share = (*share + part).min(1.0);
        }
    }
    shares
}

/// The part of `guaranteed_bps` a link carrying `share` of the keys holds (rounded up).
fn part(guaranteed_bps: u64, share: f64) -> u64 {
    (guaranteed_bps as f64 * share.clamp(0.0, 1.0)).ceil() as u64
}

/// The guaranteed rate every link carries for the reservations other than `except`'s.
pub fn reserved_per_link(
    table: &BTreeMap<Uuid, Reservation>,
    except: Uuid,
) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for (id, r) in table {
        if *id == except {
            continue;
        }
        for (link, share) in &r.links {
            *sums.entry(link.clone()).or_insert(0u64) += part(r.guaranteed_bps, *share);
        }
    }
    sums
}

/// Whether `class` fits on `links` beside the reservations of `table` other than
/// `session`'s; `rate_of` gives a link's key rate (`None`: not a link this controller
/// knows, not checked).
pub fn check(
    table: &BTreeMap<Uuid, Reservation>,
    session: Uuid,
    class: &ClassSpec,
    links: &Shares,
    rate_of: impl Fn(&str) -> Option<f64>,
) -> Result<(), AdmissionRefusal> {
    if class.guaranteed_bps == 0 {
        return Ok(());
    }
    let reserved = reserved_per_link(table, session);
    for (link, share) in links {
        let Some(rate_bps) = rate_of(link) else {
            continue;
        };
        let reserved_bps = reserved.get(link).copied().unwrap_or(0);
        let needed = part(class.guaranteed_bps, *share);
        if (reserved_bps + needed) as f64 > rate_bps {
            return Err(AdmissionRefusal::LinkFull {
                link: link.clone(),
                rate_bps,
                reserved_bps,
                class: class.name.clone(),
                guaranteed_bps: needed,
            });
        }
    }
    Ok(())
}

/// Whether peer `domain` may use class `class`: `exposed` (the classes its agreement names)
/// empty means any class.
pub fn exposed_to(exposed: &[String], class: &str, domain: &str) -> Result<(), AdmissionRefusal> {
    if exposed.is_empty() || exposed.iter().any(|c| c == class) {
        Ok(())
    } else {
        Err(AdmissionRefusal::NotExposed {
            class: class.to_owned(),
            domain: domain.to_owned(),
            exposed: exposed.join(", "),
        })
    }
}

/// The class of a peer's session: the class its prepare names (`requested`, checked against
/// what the peer's agreement exposes and what this domain configures), else the class this
/// domain gives the pair or the peer's domain. `Ok(None)`: no QoS here, nothing to hold.
pub fn peer_class(
    policy: &QosPolicy,
    exposed: &[String],
    from: &str,
    requested: Option<&str>,
    master: &str,
    slave: &str,
) -> Result<Option<ClassSpec>, AdmissionRefusal> {
    match requested {
        Some(class) => {
            exposed_to(exposed, class, from)?;
            if !policy.is_active() {
                return Ok(None);
            }
            policy
                .classes
                .get(class)
                .cloned()
                .map(Some)
                .ok_or_else(|| AdmissionRefusal::UnknownClass(class.to_owned()))
        }
        None => {
            let class = policy
                .class_of(master, slave, |s| (s == master).then(|| from.to_owned()))
                .cloned();
            if let Some(c) = &class {
                exposed_to(exposed, &c.name, from)?;
            }
            Ok(class)
        }
    }
}

/// The controller's QoS policy and the reservations of the sessions it admitted.
#[derive(Default)]
pub struct Admission {
    policy: RwLock<Arc<QosPolicy>>,
    table: Mutex<BTreeMap<Uuid, Reservation>>,
}

impl Admission {
    /// The policy in effect.
    pub fn policy(&self) -> Arc<QosPolicy> {
        self.policy.read().expect("QoS policy").clone()
    }

    /// Puts a (validated) policy in effect; sessions admitted keep their reservations.
    pub fn set_policy(&self, policy: QosPolicy) -> bool {
        let mut current = self.policy.write().expect("QoS policy");
        if **current == policy {
            return false;
        }
        *current = Arc::new(policy);
        true
    }

    /// The class of a session of `master` for `slave`; `peer` is the peer domain of the SAE
    /// that is not this domain's, if any. `None`: QoS is off.
    pub fn class_of(
        &self,
        master: &str,
        slave: &str,
        peer: Option<&str>,
        local: impl Fn(&str) -> bool,
    ) -> Option<ClassSpec> {
        self.policy()
            .class_of(master, slave, |s| {
                (!local(s)).then(|| peer.map(str::to_owned)).flatten()
            })
            .cloned()
    }

    /// Checks `class` on `links` (beside every other session's reservation) without holding
    /// anything.
    pub fn check(
        &self,
        session: Uuid,
        class: &ClassSpec,
        links: &Shares,
        topology: &Topology,
    ) -> Result<(), AdmissionRefusal> {
        let table = self.table.lock().expect("admission table");
        check(&table, session, class, links, |l| {
            topology.links.get(l).map(|l| l.rate_bps)
        })
    }

    /// Admits `session` of `class` on `links` and holds its guarantee there (replacing what
    /// it held), or refuses it and changes nothing.
    pub fn admit(
        &self,
        session: Uuid,
        class: &ClassSpec,
        links: Shares,
        topology: &Topology,
    ) -> Result<(), AdmissionRefusal> {
        self.admit_with(session, class, links, |l| {
            topology.links.get(l).map(|l| l.rate_bps)
        })
    }

    /// [`Self::admit`] with the links' key rates from `rate_of` (a distributed domain's
    /// link-state database).
    pub fn admit_with(
        &self,
        session: Uuid,
        class: &ClassSpec,
        links: Shares,
        rate_of: impl Fn(&str) -> Option<f64>,
    ) -> Result<(), AdmissionRefusal> {
        let mut table = self.table.lock().expect("admission table");
        check(&table, session, class, &links, rate_of)?;
        table.insert(
            session,
            Reservation {
                class: class.name.clone(),
                guaranteed_bps: class.guaranteed_bps,
                links,
                seen: Instant::now(),
            },
        );
        Ok(())
    }

    /// Puts back what `session` held before (`None`: nothing).
    pub fn restore(&self, session: Uuid, before: Option<Reservation>) {
        let mut table = self.table.lock().expect("admission table");
        match before {
            Some(held) => table.insert(session, held),
            None => table.remove(&session),
        };
    }

    /// Releases what `session` holds.
    pub fn release(&self, session: Uuid) {
        self.table.lock().expect("admission table").remove(&session);
    }

    /// Follows the sessions: `live` holds every installed or prepared session with the links
    /// of its current route; a reservation moves to its session's route, and one whose
    /// session is gone (ended, expired, refused) is released once [`PENDING_FOR`] has passed
    /// since it was last seen (a session being installed or agreed is not live yet).
    pub fn sync(&self, live: &BTreeMap<Uuid, Shares>, now: Instant) {
        let mut table = self.table.lock().expect("admission table");
        table.retain(|id, r| match live.get(id) {
            Some(links) => {
                if r.links != *links {
                    r.links = links.clone();
                }
                r.seen = now;
                true
            }
            None => now.duration_since(r.seen) < PENDING_FOR,
        });
    }

    /// Holds `class` on `links` for a session admitted before (restored after a restart, or
    /// admitted while QoS was off) when it holds nothing yet; never refuses.
    pub fn adopt(&self, session: Uuid, class: &ClassSpec, links: Shares) {
        self.table
            .lock()
            .expect("admission table")
            .entry(session)
            .or_insert_with(|| Reservation {
                class: class.name.clone(),
                guaranteed_bps: class.guaranteed_bps,
                links,
                seen: Instant::now(),
            });
    }

    /// What `session` holds.
    pub fn held(&self, session: Uuid) -> Option<Reservation> {
        self.table
            .lock()
            .expect("admission table")
            .get(&session)
            .cloned()
    }

    /// Whether `session` holds a reservation.
    pub fn holds(&self, session: Uuid) -> bool {
        self.table
            .lock()
            .expect("admission table")
            .contains_key(&session)
    }

    /// The reservations held, by session.
    pub fn reservations(&self) -> BTreeMap<Uuid, Reservation> {
        self.table.lock().expect("admission table").clone()
    }

    /// The guaranteed rate held on every link.
    pub fn reserved_per_link(&self) -> BTreeMap<String, u64> {
        reserved_per_link(&self.table.lock().expect("admission table"), Uuid::nil())
    }
}

/// The admission's state under `controller/qos`: sessions holding their guarantee per
/// class, and the guaranteed rate held on each link.
pub fn write_state(
    tree: &mut yang2::data::DataTree<'static>,
    admission: &Admission,
) -> Result<(), crate::netconf::RpcError> {
    use crate::model::qos::{class_entry, CONTROLLER_QOS};
    let set = crate::netconf::datastore::set_leaf;
    let policy = admission.policy();
    let held = admission.reservations();
    for name in policy.classes.keys() {
        let count = held.values().filter(|r| &r.class == name).count();
        set(
            tree,
            &format!("{}/{ADMITTED_SESSIONS}", class_entry(CONTROLLER_QOS, name)),
            &count.to_string(),
        )?;
    }
    for (link, bps) in reserved_per_link(&held, Uuid::nil()) {
        let entry = format!(
            "{CONTROLLER_QOS}/link[id={}]",
            crate::netconf::xml::quote(&link)
        );
        set(tree, &format!("{entry}/{RESERVED_RATE}"), &bps.to_string())?;
    }
    Ok(())
}

/// State leaf of a class entry: sessions of the class holding their guarantee.
pub const ADMITTED_SESSIONS: &str = "admitted-sessions";
/// State leaf of a link entry: the guaranteed rate held on it.
pub const RESERVED_RATE: &str = "reserved-rate";

impl super::instance::Instance {
    /// A rerouted session admitted again on its new route (`paths`), beside every other
    /// session's guarantee; its reservation moves there once the route is installed.
    pub(super) fn readmit(
        &self,
        session: &super::sessions::Session,
        paths: Vec<super::sessions::SessionPath>,
    ) -> Result<Vec<super::sessions::SessionPath>, super::error::ControlError> {
        let admission = &self.c.admission;
        let class = match admission.held(session.id) {
            Some(held) => admission
                .policy()
                .classes
                .get(&held.class)
                .cloned()
                .map(|mut c| {
                    c.guaranteed_bps = held.guaranteed_bps;
                    c
                }),
            None => None,
        };
        if let Some(class) = class {
            let links = links_of(&paths);
            admission.check(session.id, &class, &links, &self.state.topology)?;
        }
        Ok(paths)
    }

    /// Reservations follow the sessions after every input: installed sessions and prepared
    /// segments are live (a session holding nothing yet, e.g. restored after a restart,
    /// takes its class's guarantee without a check); the others are released once pending
    /// too long.
    pub(super) fn sync_admission(&mut self) {
        let admission = &self.c.admission;
        let policy_on = admission.policy().is_active();
        let prepared = self.state.interworking.prepared.values().map(|(s, _)| s);
        let mut live = BTreeMap::new();
        for session in self.state.sessions.values().chain(prepared) {
            let links = links_of(&session.routed_paths());
            if policy_on && !admission.holds(session.id) {
                let peer = session
                    .interworking
                    .as_ref()
                    .map(|iw| iw.peer_domain.as_str());
                let topology = &self.state.topology;
                if let Some(class) =
                    admission.class_of(&session.master_sae, &session.slave_sae, peer, |s| {
                        topology.saes.contains_key(s)
                    })
                {
                    admission.adopt(session.id, &class, links.clone());
                }
            }
            live.insert(session.id, links);
        }
        admission.sync(&live, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::km::qos::policy::tests::class;

    /// The links of one path (all of the session's keys cross each).
    fn links(l: &[&str]) -> Shares {
        l.iter().map(|s| (s.to_string(), 1.0)).collect()
    }

    fn path(links: &[&str], share_bps: f64) -> crate::control::sessions::SessionPath {
        crate::control::sessions::SessionPath {
            nodes: Vec::new(),
            links: links.iter().map(|s| s.to_string()).collect(),
            share_bps,
        }
    }

    #[test]
    fn a_multipath_plan_holds_on_each_link_the_part_its_paths_carry() {
        // 3/4 of the keys over l1-l3, 1/4 over l2-l3: l3 carries them all
        let shares = links_of(&[path(&["l1", "l3"], 750.0), path(&["l2", "l3"], 250.0)]);
        assert_eq!(shares["l1"], 0.75);
        assert_eq!(shares["l2"], 0.25);
        assert_eq!(shares["l3"], 1.0);
        // a plan without shares splits evenly; a single path puts all on every link
        assert_eq!(links_of(&[path(&["a"], 0.0), path(&["b"], 0.0)])["a"], 0.5);
        assert_eq!(links_of(&[path(&["a", "b"], 10.0)]), links(&["a", "b"]));
        let a = Admission::default();
        let t = topology(&[("l1", 1500.0), ("l2", 400.0), ("l3", 2000.0)]);
        let gold = class("gold", 10, 800, None);
        let s1 = Uuid::new_v4();
        a.admit(s1, &gold, shares.clone(), &t).unwrap();
        let held = a.reserved_per_link();
        assert_eq!((held["l1"], held["l2"], held["l3"]), (600, 200, 800));
        // a second such session fits (exactly, on l2's 400 bit/s); a third does not, and
        // the refusal names the first full link and the part it needed there
        a.admit(Uuid::new_v4(), &gold, shares.clone(), &t).unwrap();
        let refusal = a.admit(Uuid::new_v4(), &gold, shares, &t).unwrap_err();
        assert!(matches!(
            refusal,
            AdmissionRefusal::LinkFull { ref link, guaranteed_bps: 600, .. } if link == "l1"
        ));
    }

    fn topology(rates: &[(&str, f64)]) -> Topology {
        let mut t = Topology::default();
        for (id, rate) in rates {
            t.links.insert(
                id.to_string(),
                crate::control::topology::LinkState {
                    id: id.to_string(),
                    nodes: ["n1".into(), "n2".into()],
                    up: true,
                    rate_bps: *rate,
                    own_blocks: BTreeMap::new(),
                    capacity_blocks: 0,
                    reports: BTreeMap::new(),
                },
            );
        }
        t
    }

    #[test]
    fn guarantees_add_up_per_link() {
        let a = Admission::default();
        let t = topology(&[("l1", 1000.0), ("l2", 5000.0)]);
        let gold = class("gold", 10, 400, None);
        let (s1, s2, s3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        a.admit(s1, &gold, links(&["l1", "l2"]), &t).unwrap();
        a.admit(s2, &gold, links(&["l1"]), &t).unwrap();
        assert_eq!(a.reserved_per_link()["l1"], 800);
        assert_eq!(a.reserved_per_link()["l2"], 400);
        // 1200 > 1000 on l1; l2 alone would fit
        let refusal = a.admit(s3, &gold, links(&["l2", "l1"]), &t).unwrap_err();
        assert_eq!(
            refusal,
            AdmissionRefusal::LinkFull {
                link: "l1".into(),
                rate_bps: 1000.0,
                reserved_bps: 800,
                class: "gold".into(),
                guaranteed_bps: 400,
            }
        );
        let text = refusal.to_string();
        assert!(text.contains("l1") && text.contains("1000") && text.contains("800"));
        // nothing held for the refused session
        assert!(!a.reservations().contains_key(&s3));
        a.admit(s3, &gold, links(&["l2"]), &t).unwrap();
        // a class with no guarantee always fits; an unknown link is not checked
        let bronze = class("bronze", 1, 0, None);
        a.admit(Uuid::new_v4(), &bronze, links(&["l1"]), &t)
            .unwrap();
        a.admit(Uuid::new_v4(), &gold, links(&["qx"]), &t).unwrap();
        // re-admitting a session replaces what it held (a reroute does not count itself)
        a.admit(s1, &gold, links(&["l1"]), &t).unwrap();
        assert_eq!(a.reserved_per_link()["l2"], 400);
    }

    #[test]
    fn reservations_are_released_and_follow_routes() {
        let a = Admission::default();
        let t = topology(&[("l1", 1000.0), ("l2", 1000.0)]);
        let gold = class("gold", 10, 600, None);
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        a.admit(s1, &gold, links(&["l1"]), &t).unwrap();
        assert!(a.admit(s2, &gold, links(&["l1"]), &t).is_err());
        a.release(s1);
        a.admit(s2, &gold, links(&["l1"]), &t).unwrap();
        // s2 rerouted to l2: l1 is free again
        let now = Instant::now();
        let live = BTreeMap::from([(s2, links(&["l2"]))]);
        a.sync(&live, now);
        assert_eq!(a.reservations()[&s2].links, links(&["l2"]));
        a.admit(s1, &gold, links(&["l1"]), &t).unwrap();
        // s1 never installed: held while pending, released after
        a.sync(&live, now);
        assert!(a.reservations().contains_key(&s1));
        a.sync(&live, now + PENDING_FOR + Duration::from_secs(1));
        assert!(!a.reservations().contains_key(&s1));
        // s2 ended
        a.sync(
            &BTreeMap::new(),
            now + 2 * PENDING_FOR + Duration::from_secs(2),
        );
        assert!(a.reservations().is_empty());
    }

    fn policy() -> QosPolicy {
        let mut p = QosPolicy::default();
        p.classes
            .insert("gold".into(), class("gold", 10, 1000, None));
        p.classes
            .insert("silver".into(), class("silver", 5, 100, None));
        p.classes
            .insert("bronze".into(), class("bronze", 1, 0, None));
        p.pairs
            .insert(QosPolicy::pair_key("sae-a1", "sae-a2"), "gold".into());
        p.domains.insert("B".into(), "silver".into());
        p.default_class = Some("bronze".into());
        p
    }

    #[test]
    fn class_by_pair_then_peer_domain_then_default() {
        let a = Admission::default();
        assert!(a.class_of("x", "y", None, |_| true).is_none());
        a.set_policy(policy());
        let local = |s: &str| s.starts_with("sae-a");
        assert_eq!(
            a.class_of("sae-a2", "sae-a1", None, local).unwrap().name,
            "gold"
        );
        assert_eq!(
            a.class_of("sae-a1", "sae-a3", None, local).unwrap().name,
            "bronze"
        );
        assert_eq!(
            a.class_of("sae-a1", "sae-b1", Some("B"), local)
                .unwrap()
                .name,
            "silver"
        );
        assert_eq!(
            a.class_of("sae-a1", "sae-c1", Some("C"), local)
                .unwrap()
                .name,
            "bronze"
        );
    }

    #[test]
    fn a_peer_uses_only_the_classes_it_is_exposed() {
        let p = policy();
        let exposed = vec!["silver".to_owned(), "bronze".to_owned()];
        let refusal = peer_class(&p, &exposed, "A", Some("gold"), "sae-a1", "sae-b1").unwrap_err();
        assert!(matches!(refusal, AdmissionRefusal::NotExposed { .. }));
        assert!(refusal.to_string().contains("gold") && refusal.to_string().contains("A"));
        assert_eq!(
            peer_class(&p, &exposed, "A", Some("silver"), "m", "s")
                .unwrap()
                .unwrap()
                .name,
            "silver"
        );
        // an empty list exposes every class; a class not configured here is refused
        assert_eq!(
            peer_class(&p, &[], "A", Some("gold"), "m", "s")
                .unwrap()
                .unwrap()
                .name,
            "gold"
        );
        assert_eq!(
            peer_class(&p, &[], "A", Some("platinum"), "m", "s"),
            Err(AdmissionRefusal::UnknownClass("platinum".into()))
        );
        // an old peer names no class: the peer domain's mapping, then the default
        assert_eq!(
            peer_class(&p, &exposed, "B", None, "sae-b1", "sae-a1")
                .unwrap()
                .unwrap()
                .name,
            "silver"
        );
        assert_eq!(
            peer_class(&p, &exposed, "A", None, "sae-x", "sae-a1")
                .unwrap()
                .unwrap()
                .name,
            "bronze"
        );
        // QoS off here: the exposure still holds, nothing is reserved
        let off = QosPolicy::default();
        assert!(peer_class(&off, &exposed, "A", Some("gold"), "m", "s").is_err());
        assert_eq!(
            peer_class(&off, &exposed, "A", Some("silver"), "m", "s"),
            Ok(None)
        );
    }
}
