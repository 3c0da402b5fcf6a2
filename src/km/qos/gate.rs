//! The KM's QoS gate: every reservation of link key for a key supply or a relay first waits
//! for its turn on the link's [`Scheduler`], and every supply holds its class's quota
//! ([`Ledger`]). A [`Turn`] is held while the request reserves its blocks (waiting for the
//! pool if it must); marked [`Turn::served`] it is charged, dropped it is not, and either way
//! the next request's turn starts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::policy::{ClassSpec, QosPolicy};
use super::quota::Ledger;
use super::scheduler::{Next, Phase, Request, Scheduler, Unservable};
use super::store::{QosStoreError, QuotaStore};

/// Why QoS refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QosRefusal {
    #[error("QoS class {class} has used its quota: {used} of {quota_bits} bits in this period of {period_seconds} s (renewed in {renews_in_seconds} s)")]
    Quota {
        class: String,
        used: u64,
        quota_bits: u64,
        period_seconds: u32,
        renews_in_seconds: u64,
    },
    #[error("QoS class {class}: {reason}")]
    Unservable { class: String, reason: Unservable },
    #[error("QoS class {class} got no turn on link {link} within {waited_ms} ms: key is scarce and other classes are served first, or the class is at its maximum rate")]
    NoTurn {
        class: String,
        link: String,
        waited_ms: u64,
    },
    #[error("the QoS policy changed while the request waited")]
    PolicyChanged,
}

/// Figures of one class at this KM since start (or since the class was configured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Requests that received their key (per link part).
    pub granted: u64,
    /// Key bits they received.
    pub granted_bits: u64,
    /// Requests refused because the class's quota was used.
    pub refused_quota: u64,
    /// Requests that got no turn in time.
    pub refused_wait: u64,
}

struct Grant {
    class: usize,
    phase: Phase,
}

struct LinkGate {
    scheduler: Scheduler,
    /// The request that holds the link's turn.
    holder: Option<u64>,
    waiters: HashMap<u64, oneshot::Sender<Grant>>,
    /// When a timer will look at the link again (a class at its maximum rate).
    timer_at: Option<u64>,
}

struct Inner {
    policy: Arc<QosPolicy>,
    /// Classes in the schedulers' order.
    order: Vec<ClassSpec>,
    generation: u64,
    links: HashMap<String, LinkGate>,
    ledger: Ledger,
    stats: BTreeMap<String, ClassStats>,
    next_id: u64,
}

/// The QoS state of a KM.
pub struct Qos {
    inner: Mutex<Inner>,
    epoch: Instant,
    /// Where quota usage is kept across restarts (`None`: in memory only).
    store: Option<QuotaStore>,
}

impl Default for Qos {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                policy: Arc::default(),
                order: Vec::new(),
                generation: 0,
                links: HashMap::new(),
                ledger: Ledger::default(),
                stats: BTreeMap::new(),
                next_id: 0,
            }),
            epoch: Instant::now(),
            store: None,
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Qos {
    /// The QoS state of a KM whose quota usage is kept in the store at `path` (see
    /// [`super::store`]): the usage recorded there is in force again.
    pub fn open(path: &std::path::Path) -> Result<Self, QosStoreError> {
        let (store, windows) = QuotaStore::open(path)?;
        let mut qos = Self {
            store: Some(store),
            ..Self::default()
        };
        let inner = qos.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        for (class, period, used) in windows {
            inner.ledger.restore(&class, period, used);
        }
        Ok(qos)
    }

    /// Records `class`'s window in the store (called under the lock, so in ledger order).
    fn persist(&self, inner: &Inner, class: &str, ack: bool) -> Option<oneshot::Receiver<bool>> {
        let store = self.store.as_ref()?;
        store.record(class, inner.ledger.window_of(class), ack)
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<QosPolicy> {
        self.lock().policy.clone()
    }

    /// Puts a (validated) policy in force. Requests waiting under the old one are told to
    /// retry; quotas already used are kept for the classes that remain.
    pub fn set_policy(&self, policy: QosPolicy) {
        let mut inner = self.lock();
        if *inner.policy == policy {
            return;
        }
        inner.generation += 1;
        inner.links.clear(); // drops the waiters' senders: they see PolicyChanged
        for gone in inner.ledger.retain(|c| policy.classes.contains_key(c)) {
            if let Some(store) = &self.store {
                store.record(&gone, None, false);
            }
        }
        inner.stats.retain(|c, _| policy.classes.contains_key(c));
        inner.order = policy.classes.values().cloned().collect();
        inner.policy = Arc::new(policy);
    }

    /// The class of a request of `master` for `slave`, `None` when QoS is off.
    pub fn class_of(
        &self,
        master: &str,
        slave: &str,
        domain_of: impl Fn(&str) -> Option<String>,
    ) -> Option<String> {
        let policy = self.policy();
        policy
            .class_of(master, slave, domain_of)
            .map(|c| c.name.clone())
    }

    /// Figures per class.
    pub fn stats(&self) -> BTreeMap<String, (ClassStats, u64)> {
        let inner = self.lock();
        let now = unix_seconds();
        inner
            .order
            .iter()
            .map(|c| {
                let used = c.quota.map_or(0, |q| inner.ledger.used(&c.name, q, now));
                (
                    c.name.clone(),
                    (inner.stats.get(&c.name).copied().unwrap_or_default(), used),
                )
            })
            .collect()
    }

    /// Waits up to `wait` for the turn of a request of `bits` key bits of `class` on `link`
    /// (`None`: key made at this KM, no link: only the quota applies). `Ok(None)`: QoS is
    /// off or the class is unknown (the policy changed), serve as usual. A turn that holds
    /// quota is returned once its hold is on disk (when the usage is stored).
    pub async fn turn(
        self: &Arc<Self>,
        link: Option<&str>,
        class: &str,
        bits: u64,
        wait: Duration,
    ) -> Result<Option<Turn>, QosRefusal> {
        let mut written = None;
        let turn = self.turn_held(link, class, bits, wait, &mut written).await;
        if let Some(written) = written {
            // a failure is logged by the writer: the key is supplied anyway (the usage in
            // memory still holds the quota until the KM restarts)
            let _ = written.await;
        }
        turn
    }

    async fn turn_held(
        self: &Arc<Self>,
        link: Option<&str>,
        class: &str,
        bits: u64,
        wait: Duration,
        written: &mut Option<oneshot::Receiver<bool>>,
    ) -> Result<Option<Turn>, QosRefusal> {
        let (rx, mut guard) = {
            let mut inner = self.lock();
            let Some(spec) = inner.policy.classes.get(class).cloned() else {
                return Ok(None);
            };
            let quota = match spec.quota {
                Some(q) => match inner.ledger.hold(class, q, bits, unix_seconds()) {
                    Ok(period) => {
                        *written = self.persist(&inner, class, true);
                        Some(period)
                    }
                    Err(over) => {
                        inner.stats.entry(class.into()).or_default().refused_quota += 1;
                        return Err(QosRefusal::Quota {
                            class: class.into(),
                            used: over.used,
                            quota_bits: over.quota.bits,
                            period_seconds: over.quota.period_seconds,
                            renews_in_seconds: over.renews_in_seconds,
                        });
                    }
                },
                None => None,
            };
            let generation = inner.generation;
            let mut turn = Turn {
                qos: self.clone(),
                id: 0,
                link: link.map(str::to_owned),
                class: class.to_owned(),
                generation,
                index: 0,
                phase: Phase::Share,
                bits,
                quota,
                served: false,
            };
            let Some(link) = link else {
                return Ok(Some(turn));
            };
            let now = self.now_ns();
            let order = inner.order.clone();
            inner.next_id += 1;
            let id = inner.next_id;
            let gate = inner
                .links
                .entry(link.to_owned())
                .or_insert_with(|| LinkGate {
                    scheduler: Scheduler::new(&order, now),
                    holder: None,
                    waiters: HashMap::new(),
                    timer_at: None,
                });
            let index = gate
                .scheduler
                .class_index(class)
                .expect("the class is in order");
            turn.index = index;
            turn.id = id;
            if let Err(reason) = gate.scheduler.enqueue(index, Request { id, bits }) {
                drop(inner);
                drop(turn); // gives the quota back
                return Err(QosRefusal::Unservable {
                    class: class.into(),
                    reason,
                });
            }
            let (tx, rx) = oneshot::channel();
            gate.waiters.insert(id, tx);
            dispatch(self, gate, link, now);
            (
                rx,
                Waiting {
                    turn: Some(turn),
                    id,
                },
            )
        };
        let outcome = tokio::time::timeout(wait, rx).await;
        let mut turn = guard.turn.take().expect("the guard holds the turn");
        match outcome {
            Ok(Ok(grant)) => {
                turn.index = grant.class;
                turn.phase = grant.phase;
                Ok(Some(turn))
            }
            Ok(Err(_)) => Err(QosRefusal::PolicyChanged),
            Err(_) => {
                // given up: out of the queue, or, if the turn came meanwhile, passed on
                let mut inner = self.lock();
                let link = turn.link.clone().unwrap_or_default();
                let generation = inner.generation;
                inner.stats.entry(class.into()).or_default().refused_wait += 1;
                if let Some(gate) = inner.links.get_mut(&link) {
                    if turn.generation == generation && gate.scheduler.cancel(guard.id) {
                        gate.waiters.remove(&guard.id);
                    }
                }
                drop(inner);
                Err(QosRefusal::NoTurn {
                    class: class.into(),
                    link,
                    waited_ms: wait.as_millis() as u64,
                })
            }
        }
    }
}

/// Cancels a wait whose future is dropped (the caller went away) before its turn came.
struct Waiting {
    turn: Option<Turn>,
    id: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else {
            return;
        };
        let qos = turn.qos.clone();
        let mut inner = qos.lock();
        let generation = inner.generation;
        if let Some(gate) = turn.link.as_ref().and_then(|l| inner.links.get_mut(l)) {
            if turn.generation == generation && gate.scheduler.cancel(self.id) {
                gate.waiters.remove(&self.id);
            }
            // else its grant may have been sent: dropping the turn frees the link if it
            // holds it
        }
        drop(inner);
        drop(turn);
    }
}

/// Hands the link's turn to the next request, if none holds it.
fn dispatch(qos: &Arc<Qos>, gate: &mut LinkGate, link: &str, now: u64) {
    while gate.holder.is_none() {
        match gate.scheduler.next(now) {
            Next::Serve {
                class,
                request,
                phase,
            } => {
                if let Some(tx) = gate.waiters.remove(&request.id) {
                    if tx.send(Grant { class, phase }).is_ok() {
                        gate.holder = Some(request.id);
                    }
                }
            }
            Next::WaitUntil(at) => {
                if gate.timer_at.is_none_or(|t| t > at) {
                    gate.timer_at = Some(at);
                    let weak: Weak<Qos> = Arc::downgrade(qos);
                    let link = link.to_owned();
                    let delay = Duration::from_nanos(at.saturating_sub(now));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Some(qos) = weak.upgrade() {
                            let now = qos.now_ns();
                            let mut inner = qos.lock();
                            if let Some(gate) = inner.links.get_mut(&link) {
                                gate.timer_at = None;
                                dispatch(&qos, gate, &link, now);
                            }
                        }
                    });
                }
                return;
            }
            Next::Idle => return,
        }
    }
}

/// A request's turn on a link (or, without a link, its hold on the quota).
pub struct Turn {
    qos: Arc<Qos>,
    /// The request's handle in its link's scheduler.
    id: u64,
    link: Option<String>,
    class: String,
    /// The policy generation it was queued under.
    generation: u64,
    index: usize,
    phase: Phase,
    bits: u64,
    quota: Option<u64>,
    served: bool,
}

impl Turn {
    /// The request received its key: charged to its class.
    pub fn served(mut self) {
        self.served = true;
    }

    /// The request's class.
    pub fn class(&self) -> &str {
        &self.class
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let qos = self.qos.clone();
        let now = qos.now_ns();
        let mut inner = qos.lock();
        if self.served {
            let s = inner.stats.entry(self.class.clone()).or_default();
            s.granted += 1;
            s.granted_bits += self.bits;
        } else if let Some(period) = self.quota {
            inner.ledger.release(&self.class, period, self.bits);
            qos.persist(&inner, &self.class, false);
        }
        if self.generation != inner.generation {
            return;
        }
        let Some(link) = self.link.as_deref() else {
            return;
        };
        if let Some(gate) = inner.links.get_mut(link) {
            if gate.holder != Some(self.id) {
                return; // never got the turn (gave up while queued)
            }
            if self.served {
                gate.scheduler
                    .charge(self.index, self.bits, self.phase, now);
            }
            gate.holder = None;
            dispatch(&qos, gate, link, now);
        }
    }
}

/// The details of an ETSI GS QKD 014 error for a QoS refusal: the reason in words, and
/// the figures behind it.
pub fn refusal_detail(refusal: &QosRefusal) -> serde_json::Value {
    let reason = refusal.to_string();
    match refusal {
        QosRefusal::Quota {
            class,
            used,
            quota_bits,
            period_seconds,
            renews_in_seconds,
        } => serde_json::json!({
            "reason": reason,
            "qos_class": class,
            "quota_bits": quota_bits,
            "quota_used_bits": used,
            "quota_period_seconds": period_seconds,
            "quota_renews_in_seconds": renews_in_seconds,
        }),
        QosRefusal::Unservable { class, .. } | QosRefusal::NoTurn { class, .. } => {
            serde_json::json!({ "reason": reason, "qos_class": class })
        }
        QosRefusal::PolicyChanged => serde_json::json!({ "reason": reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::{tests::class, Quota};
    use super::*;

    fn qos(classes: Vec<ClassSpec>) -> Arc<Qos> {
        let q = Arc::new(Qos::default());
        q.set_policy(policy_with(classes));
        q
    }

    #[tokio::test]
    async fn the_higher_class_is_served_first_when_the_link_is_busy() {
        let q = qos(vec![
            class("low", 1, 0, None),
            class("high", 5, 1_000_000, None),
        ]);
        let w = Duration::from_secs(5);
        let first = q.turn(Some("l"), "low", 256, w).await.unwrap().unwrap();
        // while the first holds the link, one low and one high request queue
        let (q1, q2) = (q.clone(), q.clone());
        let order = Arc::new(Mutex::new(Vec::new()));
        let (o1, o2) = (order.clone(), order.clone());
        let low = tokio::spawn(async move {
            let t = q1.turn(Some("l"), "low", 256, w).await.unwrap().unwrap();
            o1.lock().unwrap().push("low");
            t.served();
        });
        tokio::task::yield_now().await;
        let high = tokio::spawn(async move {
            let t = q2.turn(Some("l"), "high", 256, w).await.unwrap().unwrap();
            o2.lock().unwrap().push("high");
            t.served();
        });
        // both wait before the link is freed (the guarantee bucket of high fills meanwhile)
        while q.lock().links["l"].scheduler.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        first.served();
        low.await.unwrap();
        high.await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["high", "low"]);
        assert_eq!(q.stats()["low"].0.granted, 2);
    }

    #[tokio::test]
    async fn quota_refuses_and_failed_requests_give_it_back() {
        let mut c = class("c", 1, 0, None);
        c.quota = Some(Quota {
            bits: 1000,
            period_seconds: 3600,
        });
        let q = qos(vec![c]);
        let w = Duration::from_secs(1);
        let t = q.turn(Some("l"), "c", 600, w).await.unwrap().unwrap();
        drop(t); // failed: not charged
        q.turn(None, "c", 600, w).await.unwrap().unwrap().served();
        let refused = q.turn(Some("l"), "c", 600, w).await.err().unwrap();
        assert!(
            matches!(refused, QosRefusal::Quota { used: 600, .. }),
            "{refused}"
        );
        assert_eq!(q.stats()["c"].1, 600);
        assert_eq!(q.stats()["c"].0.refused_quota, 1);
    }

    fn policy_with(classes: Vec<ClassSpec>) -> QosPolicy {
        let mut p = QosPolicy {
            default_class: classes.first().map(|c| c.name.clone()),
            ..Default::default()
        };
        for c in classes {
            p.classes.insert(c.name.clone(), c);
        }
        p.validate().unwrap();
        p
    }

    #[tokio::test]
    async fn quota_usage_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("qkdni-qos-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qos.redb");
        let mut c = class("c", 1, 0, None);
        c.quota = Some(Quota {
            bits: 1000,
            period_seconds: 3600,
        });
        let other = class("other", 1, 0, None);
        let w = Duration::from_secs(1);
        {
            let q = Arc::new(Qos::open(&path).unwrap());
            q.set_policy(policy_with(vec![c.clone(), other.clone()]));
            q.turn(Some("l"), "c", 600, w)
                .await
                .unwrap()
                .unwrap()
                .served();
            // a failed request gives its hold back, on disk too
            drop(q.turn(None, "c", 300, w).await.unwrap().unwrap());
        }
        let q = Arc::new(Qos::open(&path).unwrap());
        q.set_policy(policy_with(vec![c.clone(), other.clone()]));
        assert_eq!(q.stats()["c"].1, 600);
        let refused = q.turn(Some("l"), "c", 600, w).await.err().unwrap();
        assert!(
            matches!(refused, QosRefusal::Quota { used: 600, .. }),
            "{refused}"
        );
        q.turn(None, "c", 400, w).await.unwrap().unwrap().served();
        // a class removed from the policy is forgotten on disk too
        q.set_policy(policy_with(vec![other.clone()]));
        drop(q);
        let q = Arc::new(Qos::open(&path).unwrap());
        q.set_policy(policy_with(vec![c, other]));
        assert_eq!(q.stats()["c"].1, 0);
        drop(q);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let q = qos(vec![class("c", 1, 0, None)]);
        let held = q
            .turn(Some("l"), "c", 256, Duration::from_secs(1))
            .await
            .unwrap();
        let refused = q
            .turn(Some("l"), "c", 256, Duration::from_millis(20))
            .await
            .err()
            .unwrap();
        assert!(matches!(refused, QosRefusal::NoTurn { .. }));
        assert_eq!(q.lock().links["l"].scheduler.waiting(), 0);
        drop(held);
        assert!(q.lock().links["l"].holder.is_none());
        // off: no turn needed
        q.set_policy(QosPolicy::default());
        assert!(q
            .turn(Some("l"), "c", 256, Duration::from_secs(1))
            .await
            .unwrap()
            .is_none());
    }
}
