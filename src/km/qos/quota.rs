//! Quotas per class at a KM: at most so many key bits per period, in fixed windows. Pure
//! (time is an argument), so the bound is property-tested. Bits are counted when a request
//! is admitted (held), then kept when it receives its key or given back when it fails, so
//! requests in flight can never jointly overdraw the quota.

use std::collections::BTreeMap;

use super::policy::Quota;

/// Why a request is over quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota {
    /// Bits used (and held) in this period.
    pub used: u64,
    /// The quota.
    pub quota: Quota,
    /// Seconds until the period ends and the quota is renewed.
    pub renews_in_seconds: u64,
}

#[derive(Debug, Clone, Default)]
struct Window {
    /// Index of the current period (time / period).
    period: u64,
    used: u64,
}

/// The quota windows of every class (by name).
#[derive(Debug, Default)]
pub struct Ledger {
    windows: BTreeMap<String, Window>,
}

impl Ledger {
    fn window(&mut self, class: &str, quota: Quota, now_s: u64) -> &mut Window {
        let period = now_s / u64::from(quota.period_seconds);
        let w = self.windows.entry(class.to_owned()).or_default();
        if w.period != period {
            *w = Window { period, used: 0 };
        }
        w
    }

    /// Holds `bits` of `class`'s quota, or says why not. Returns the period the bits were
    /// held in (to give them back in, if the request fails).
    pub fn hold(
        &mut self,
        class: &str,
        quota: Quota,
        bits: u64,
        now_s: u64,
    ) -> Result<u64, OverQuota> {
        let w = self.window(class, quota, now_s);
        if w.used.saturating_add(bits) > quota.bits {
            let p = u64::from(quota.period_seconds);
            return Err(OverQuota {
                used: w.used,
                quota,
                renews_in_seconds: (w.period + 1) * p - now_s,
            });
        }
        w.used += bits;
        Ok(w.period)
    }

    /// Gives back bits held in `period` by a request that received no key.
    pub fn release(&mut self, class: &str, period: u64, bits: u64) {
        if let Some(w) = self.windows.get_mut(class).filter(|w| w.period == period) {
            w.used = w.used.saturating_sub(bits);
        }
    }

    /// Bits used by `class` in the current period.
    pub fn used(&self, class: &str, quota: Quota, now_s: u64) -> u64 {
        self.windows
            .get(class)
            .filter(|w| w.period == now_s / u64::from(quota.period_seconds))
            .map_or(0, |w| w.used)
    }

    /// Forgets the classes not in `keep` (after a policy change); returns the ones forgotten.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let gone: Vec<String> = self
            .windows
            .keys()
            .filter(|class| !keep(class))
            .cloned()
            .collect();
        for class in &gone {
            self.windows.remove(class);
        }
        gone
    }

    /// `class`'s window as it stands: (period index, bits used), to be stored.
    pub fn window_of(&self, class: &str) -> Option<(u64, u64)> {
        self.windows.get(class).map(|w| (w.period, w.used))
    }

    /// Puts back a window read from the store (when the KM starts).
    pub fn restore(&mut self, class: &str, period: u64, used: u64) {
        self.windows
            .insert(class.to_owned(), Window { period, used });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn over_quota_until_the_period_ends() {
        let q = Quota {
            bits: 1000,
            period_seconds: 60,
        };
        let mut l = Ledger::default();
        assert!(l.hold("c", q, 600, 10).is_ok());
        let refused = l.hold("c", q, 600, 20).unwrap_err();
        assert_eq!(refused.used, 600);
        assert_eq!(refused.renews_in_seconds, 40);
        let p = l.hold("c", q, 400, 20).unwrap();
        l.release("c", p, 400);
        assert_eq!(l.used("c", q, 30), 600);
        assert!(l.hold("c", q, 1000, 60).is_ok());
    }

    proptest! {
        /// Whatever the order of holds, releases and time, no period ever keeps more than
        /// its quota.
        #[test]
        fn no_period_exceeds_its_quota(
            ops in proptest::collection::vec((0u64..5, 1u64..400, any::<bool>()), 1..200),
            bits in 100u64..2000,
            period in 1u32..10,
        ) {
            let q = Quota { bits, period_seconds: period };
            let mut l = Ledger::default();
            let mut now = 0;
            let mut kept: BTreeMap<u64, u64> = BTreeMap::new();
            for (dt, n, fails) in ops {
                now += dt;
                if let Ok(p) = l.hold("c", q, n, now) {
                    if fails {
                        l.release("c", p, n);
                    } else {
                        *kept.entry(p).or_default() += n;
                    }
                }
                prop_assert!(l.used("c", q, now) <= bits);
            }
            for used in kept.values() {
                prop_assert!(*used <= bits);
            }
        }
    }
}
