//! The scheduler of one link's key: which waiting request is served next when key is
//! scarce. Pure (time is an argument, in nanoseconds), so its guarantees are property-tested.
//!
//! Each class has two token buckets and a deficit counter:
//!
//! - the **guarantee bucket** fills at the class's guaranteed rate; every key the class
//!   receives empties it (never below zero). A class whose guarantee bucket holds its next
//!   request has received less than its guaranteed rate lately: it is served first, the
//!   highest priority first among such classes;
//! - the **maximum bucket** fills at the class's maximum rate; a request is eligible only
//!   when it holds the request's bits, which are then taken: the class never exceeds its
//!   maximum (beyond a burst of [`BURST_SECONDS`] of it);
//! - otherwise (every class at its guarantee) the key left is shared by **deficit round
//!   robin**, the class's priority its weight: every eligible waiting class gets its share,
//!   so no lower class starves.
//!
//! The scheduler is work-conserving: whenever some request is eligible (its class under its
//! maximum), [`Scheduler::next`] names one; guarantees only order requests, they never hold
//! key back. It serves one request at a time per link (the caller reserves its blocks, then
//! asks for the next), so an order decided here is the order in which the pool is drawn.

use std::collections::VecDeque;

use super::policy::ClassSpec;

/// Seconds of rate a bucket holds at most (its burst).
pub const BURST_SECONDS: u64 = 1;
/// Bits of deficit a class of priority 1 gets per round; a class of priority p gets p times
/// as many.
pub const QUANTUM_BITS: u64 = 1024;

const NS: u128 = 1_000_000_000;

/// A token bucket in bits.
#[derive(Debug, Clone)]
struct Bucket {
    rate_bps: u64,
    burst_bits: u64,
    tokens: u64,
    /// Remainder of the last refill, in bit-nanoseconds (so slow rates are not lost).
    carry: u128,
    at_ns: u64,
}

impl Bucket {
    fn new(rate_bps: u64, burst_bits: u64, now_ns: u64, full: bool) -> Self {
        Self {
            rate_bps,
            burst_bits,
            tokens: if full { burst_bits } else { 0 },
            carry: 0,
            at_ns: now_ns,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        if now_ns <= self.at_ns {
            return;
        }
        let grown = u128::from(now_ns - self.at_ns) * u128::from(self.rate_bps) + self.carry;
        self.at_ns = now_ns;
        let bits = grown / NS;
        self.carry = grown % NS;
        self.tokens = (u128::from(self.tokens) + bits).min(u128::from(self.burst_bits)) as u64;
        if self.tokens == self.burst_bits {
            self.carry = 0;
        }
    }

    /// When the bucket will hold `bits` (never, if they exceed its burst).
    fn ready_at(&self, bits: u64) -> Option<u64> {
        if bits > self.burst_bits || self.rate_bps == 0 {
            return (bits <= self.tokens).then_some(self.at_ns);
        }
        let missing = u128::from(bits.saturating_sub(self.tokens)) * NS;
        let missing = missing.saturating_sub(self.carry);
        let wait = missing.div_ceil(u128::from(self.rate_bps));
        Some(
            self.at_ns
                .saturating_add(wait.min(u128::from(u64::MAX)) as u64),
        )
    }
}

/// A request waiting for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The caller's handle.
    pub id: u64,
    /// Key bits it asks for.
    pub bits: u64,
}

/// Why the scheduler picked a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its class was below its guaranteed rate.
    Guarantee,
    /// Sharing the key beyond the guarantees.
    Share,
}

/// The scheduler's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Serve this request (removed from its queue) of class `class` (index).
    Serve {
        class: usize,
        request: Request,
        phase: Phase,
    },
    /// Requests wait, none eligible before `at_ns` (their classes are at their maximum).
    WaitUntil(u64),
    /// Nothing waits.
    Idle,
}

/// Why a request cannot wait here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unservable {
    #[error("a request of {bits} bits exceeds the burst of {burst} bits that the class's maximum rate allows")]
    BeyondBurst { bits: u64, burst: u64 },
}

#[derive(Debug, Clone)]
struct Class {
    spec: ClassSpec,
    guarantee: Bucket,
    max: Option<Bucket>,
    deficit: u64,
    queue: VecDeque<Request>,
}

/// The scheduler of one link.
#[derive(Debug, Clone)]
pub struct Scheduler {
    classes: Vec<Class>,
    /// The class the round robin of the share phase is visiting.
    cursor: usize,
    /// Whether that class got its quantum in this visit.
    visited: bool,
}

/// A class's quantum: its deficit's growth per round-robin visit.
fn quantum(c: &Class) -> u64 {
    QUANTUM_BITS * u64::from(c.spec.priority.max(1))
}

impl Scheduler {
    /// A scheduler for `classes` (their order is the round robin's), started at `now_ns`.
    /// Maximum buckets start full, guarantee buckets empty (a class earns its priority by
    /// waiting, not by being new).
    pub fn new(classes: &[ClassSpec], now_ns: u64) -> Self {
        Self {
            classes: classes
                .iter()
                .map(|spec| {
                    let g = spec.guaranteed_bps;
                    Class {
                        spec: spec.clone(),
                        guarantee: Bucket::new(g, g * BURST_SECONDS, now_ns, false),
                        max: spec
                            .max_bps
                            .map(|m| Bucket::new(m, m * BURST_SECONDS, now_ns, true)),
                        deficit: 0,
                        queue: VecDeque::new(),
                    }
                })
                .collect(),
            cursor: 0,
            visited: false,
        }
    }

    /// The index of class `name`.
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.spec.name == name)
    }

    /// Queues a request of class `class`.
    pub fn enqueue(&mut self, class: usize, request: Request) -> Result<(), Unservable> {
        let c = &mut self.classes[class];
        if let Some(max) = &c.max {
            if request.bits > max.burst_bits {
                return Err(Unservable::BeyondBurst {
                    bits: request.bits,
                    burst: max.burst_bits,
                });
            }
        }
        c.queue.push_back(request);
        Ok(())
    }

    /// Removes a waiting request (its caller gave up); whether it was waiting.
    pub fn cancel(&mut self, id: u64) -> bool {
        for c in &mut self.classes {
            if let Some(at) = c.queue.iter().position(|r| r.id == id) {
                c.queue.remove(at);
                if c.queue.is_empty() {
                    c.deficit = 0;
                }
                return true;
            }
        }
        false
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.classes.iter().map(|c| c.queue.len()).sum()
    }

    /// Picks the request to serve now.
    pub fn next(&mut self, now_ns: u64) -> Next {
        for c in &mut self.classes {
            c.guarantee.refill(now_ns);
            if let Some(max) = &mut c.max {
                max.refill(now_ns);
            }
        }
        let eligible: Vec<usize> = (0..self.classes.len())
            .filter(|&i| {
                let c = &self.classes[i];
                c.queue
                    .front()
                    .is_some_and(|r| c.max.as_ref().is_none_or(|m| m.tokens >= r.bits))
            })
            .collect();
        if eligible.is_empty() {
            return self
                .classes
                .iter()
                .filter_map(|c| {
                    let r = c.queue.front()?;
                    c.max.as_ref()?.ready_at(r.bits)
                })
                .min()
                .map_or(Next::Idle, Next::WaitUntil);
        }
        // below their guarantee: the highest priority first (then the class order)
        let under = eligible
            .iter()
            .copied()
            .filter(|&i| {
                let c = &self.classes[i];
                c.spec.guaranteed_bps > 0
                    && c.queue
                        .front()
                        .is_some_and(|r| c.guarantee.tokens >= r.bits.min(c.guarantee.burst_bits))
            })
            .max_by_key(|&i| (self.classes[i].spec.priority, std::cmp::Reverse(i)));
        if let Some(class) = under {
            return self.pop(class, Phase::Guarantee);
        }
        // deficit round robin over the eligible classes, weighted by priority: the class
        // under the cursor gets its quantum once per visit and is served while its deficit
        // covers its next request, then the cursor moves on
        let n = self.classes.len();
        let mut steps = 0;
        loop {
            if steps == n {
                // a whole round served nobody: skip the rounds in which nobody could be
                let skip = eligible
                    .iter()
                    .map(|&i| {
                        let c = &self.classes[i];
                        let need = c.queue.front().map_or(0, |r| r.bits);
                        need.saturating_sub(c.deficit)
                            .div_ceil(quantum(c))
                            .saturating_sub(1)
                    })
                    .min()
                    .unwrap_or(0);
                for &i in &eligible {
                    let c = &mut self.classes[i];
                    c.deficit += skip * quantum(c);
                }
                steps = 0;
            }
            let i = self.cursor;
            if eligible.contains(&i) {
                let c = &mut self.classes[i];
                if !self.visited {
                    c.deficit += quantum(c);
                    self.visited = true;
                }
                if c.queue.front().is_some_and(|r| c.deficit >= r.bits) {
                    return self.pop(i, Phase::Share);
                }
            } else if self.classes[i].queue.is_empty() {
                self.classes[i].deficit = 0;
            }
            self.cursor = (i + 1) % n;
            self.visited = false;
            steps += 1;
        }
    }

    fn pop(&mut self, class: usize, phase: Phase) -> Next {
        let request = self.classes[class]
            .queue
            .pop_front()
            .expect("the chosen class waits");
        Next::Serve {
            class,
            request,
            phase,
        }
    }

    /// Records that a request picked by [`Self::next`] received `bits` (it got its blocks):
    /// charged to its buckets and, if it won the share phase, to its deficit.
    pub fn charge(&mut self, class: usize, bits: u64, phase: Phase, now_ns: u64) {
        let c = &mut self.classes[class];
        c.guarantee.refill(now_ns);
        c.guarantee.tokens = c.guarantee.tokens.saturating_sub(bits);
        if let Some(max) = &mut c.max {
            max.refill(now_ns);
            max.tokens = max.tokens.saturating_sub(bits);
        }
        if phase == Phase::Share {
            c.deficit = c.deficit.saturating_sub(bits);
        }
        if c.queue.is_empty() {
            c.deficit = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::tests::class;
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    /// A link of `supply_bps` shared by always-busy (or rate-limited) senders, in 1 ms
    /// ticks: each tick the link's pool gains its key, and the scheduler serves requests
    /// while the pool holds the next one (one request in service at a time, as the KM does).
    /// Returns the bits each class received.
    fn simulate(
        classes: &[ClassSpec],
        demand_bps: &[Option<u64>],
        request_bits: &[u64],
        supply_bps: u64,
        ms: u64,
    ) -> Vec<u64> {
        let mut s = Scheduler::new(classes, 0);
        let mut got = vec![0u64; classes.len()];
        let mut asked = vec![0u64; classes.len()];
        let mut pool: u64 = 0;
        let mut next_id = 0;
        let mut in_service: Option<(usize, Request, Phase)> = None;
        for t in 1..=ms {
            let now = t * MS;
            pool += supply_bps / 1000;
            // senders queue a request whenever they have none waiting and want more
            #[allow(clippy::needless_range_loop)]
            for (i, demand) in demand_bps.iter().enumerate() {
                let wants = demand.is_none_or(|d| asked[i] < d * t / 1000 + request_bits[i]);
                // one request waits besides the one in service: a busy sender is backlogged
                if wants && s.classes[i].queue.is_empty() {
                    next_id += 1;
                    s.enqueue(
                        i,
                        Request {
                            id: next_id,
                            bits: request_bits[i],
                        },
                    )
                    .unwrap();
                    asked[i] += request_bits[i];
                }
            }
            loop {
                let (class, request, phase) = match in_service {
                    Some(x) => x,
                    None => match s.next(now) {
                        Next::Serve {
                            class,
                            request,
                            phase,
                        } => (class, request, phase),
                        _ => break,
                    },
                };
                if pool < request.bits {
                    in_service = Some((class, request, phase));
                    break;
                }
                pool -= request.bits;
                got[class] += request.bits;
                s.charge(class, request.bits, phase, now);
                in_service = None;
            }
            pool = pool.min(supply_bps * 2); // the pool's capacity
        }
        got
    }

    #[test]
    fn the_guaranteed_class_gets_its_rate_and_the_other_the_rest() {
        let classes = [class("low", 1, 0, None), class("high", 10, 60_000, None)];
        let got = simulate(&classes, &[None, None], &[2048, 2048], 100_000, 10_000);
        let total: u64 = got.iter().sum();
        assert!(got[1] * 100 >= total * 60, "{got:?}");
        assert!(got[0] * 100 >= total * 3, "low starved: {got:?}");
    }

    #[test]
    fn strict_priority_without_guarantees_still_feeds_the_low_class() {
        let classes = [class("low", 1, 0, None), class("high", 9, 0, None)];
        let got = simulate(&classes, &[None, None], &[256, 256], 64_000, 5_000);
        let total: u64 = got.iter().sum();
        // weights 9:1
        assert!(
            got[0] * 100 >= total * 8 && got[0] * 100 <= total * 12,
            "{got:?}"
        );
    }

    #[test]
    fn a_request_beyond_the_burst_is_refused() {
        let mut s = Scheduler::new(&[class("c", 1, 0, Some(1000))], 0);
        assert!(s.enqueue(0, Request { id: 1, bits: 1001 }).is_err());
        assert!(s.enqueue(0, Request { id: 2, bits: 1000 }).is_ok());
        assert!(s.cancel(2));
        assert_eq!(s.next(0), Next::Idle);
    }

    #[test]
    fn a_class_at_its_maximum_waits_for_tokens() {
        let mut s = Scheduler::new(&[class("c", 1, 0, Some(1000))], 0);
        s.enqueue(0, Request { id: 1, bits: 1000 }).unwrap();
        let Next::Serve { phase, .. } = s.next(0) else {
            panic!("the bucket starts full")
        };
        s.charge(0, 1000, phase, 0);
        s.enqueue(0, Request { id: 2, bits: 500 }).unwrap();
        assert_eq!(s.next(0), Next::WaitUntil(500 * MS));
        assert!(matches!(s.next(500 * MS), Next::Serve { .. }));
    }

    fn arb_class(i: usize) -> impl Strategy<Value = (ClassSpec, Option<u64>, u64)> {
        (
            1u8..=20,
            0u64..=40,
            proptest::option::of(10u64..=100),
            proptest::option::of(5u64..=100),
            1u64..=8,
        )
            .prop_map(move |(priority, g, max, demand, blocks)| {
                let guaranteed = g * 1000;
                let max = max.map(|m| (m * 1000).max(guaranteed).max(blocks * 256));
                (
                    ClassSpec {
                        name: format!("c{i}"),
                        priority,
                        guaranteed_bps: guaranteed,
                        max_bps: max,
                        quota: None,
                    },
                    demand.map(|d| d * 1000),
                    blocks * 256,
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Over a run of 4 s: every class that asks for at least its guarantee gets it
        /// (less one burst and two requests), no class exceeds its maximum (plus its burst),
        /// the link delivers what is asked up to its rate (work-conserving), and with every
        /// class backlogged each receives at least half its weighted share of the key beyond
        /// the guarantees (no starvation).
        #[test]
        fn guarantees_maxima_work_conservation_and_no_starvation(
            specs in (1usize..=4).prop_flat_map(|n| (0..n).map(arb_class).collect::<Vec<_>>()),
            supply_kbps in 50u64..=200,
        ) {
            let classes: Vec<ClassSpec> = specs.iter().map(|s| s.0.clone()).collect();
            let supply = supply_kbps * 1000;
            // the guarantees fit in the link (what controller admission ensures)
            let sum_g: u64 = classes.iter().map(|c| c.guaranteed_bps).sum();
            prop_assume!(sum_g <= supply * 9 / 10);
            let demand: Vec<Option<u64>> = specs.iter().map(|s| s.1).collect();
            let bits: Vec<u64> = specs.iter().map(|s| s.2).collect();
            let ms = 4_000;
            let secs = ms / 1000;
            let got = simulate(&classes, &demand, &bits, supply, ms);
            let total: u64 = got.iter().sum();
            let slack = |i: usize| 2 * bits[i] + classes[i].guaranteed_bps * BURST_SECONDS;
            for (i, c) in classes.iter().enumerate() {
                // what the class asked for, capped by its maximum
                let cap = c.max_bps.unwrap_or(u64::MAX);
                let asks = demand[i].unwrap_or(u64::MAX).min(cap);
                if asks >= c.guaranteed_bps {
                    prop_assert!(
                        got[i] + slack(i) >= c.guaranteed_bps * secs,
                        "class {} got {} < guarantee {} x {} s: {:?}", i, got[i], c.guaranteed_bps, secs, got
                    );
                }
                if let Some(max) = c.max_bps {
                    prop_assert!(got[i] <= max * (secs + BURST_SECONDS), "class {} over its max: {:?}", i, got);
                }
                // no starvation: with every class backlogged, each receives at least half its
                // weighted share of the key beyond the guarantees
                if demand.iter().all(Option::is_none) && classes.iter().all(|c| c.max_bps.is_none()) {
                    let weights: u64 = classes.iter().map(|c| u64::from(c.priority)).sum();
                    let excess = (supply - sum_g) * secs;
                    let share = excess * u64::from(c.priority) / weights / 2;
                    prop_assert!(
                        got[i] + 2 * bits[i] + QUANTUM_BITS * 20 >= share,
                        "class {} starved: got {} < {}: {:?}", i, got[i], share, got
                    );
                }
            }
            // work-conserving: the link delivers what was asked, up to its key rate
            let eligible_demand: u64 = (0..classes.len()).map(|i| {
                let cap = classes[i].max_bps.unwrap_or(u64::MAX);
                demand[i].unwrap_or(u64::MAX).min(cap)
            }).fold(0u64, |a, b| a.saturating_add(b));
            let expected = eligible_demand.min(supply) * secs;
            let slack: u64 = 2 * supply + bits.iter().map(|b| 2 * b).sum::<u64>();
            prop_assert!(total + slack >= expected, "delivered {} of {}: {:?}", total, expected, got);
        }
    }
}
