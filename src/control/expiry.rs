//! Sessions set up on a KM's request (keys on demand) last while their SAE pair uses them:
//! the agents' polled per-pair counters of Get key requests show use; a session whose pair
//! asked for no key for the on-demand idle time is removed like a deleted one (its routes go,
//! its peer domain removes its segment). Orchestrated sessions never expire.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::instance::Instance;
use super::messages::Job;

impl Instance {
    /// Removes the on-demand sessions of this domain's KMs whose pair has been idle for the
    /// configured time.
    pub(super) fn expire_idle(&mut self, now: Instant) {
        let idle = self.c.on_demand_idle_seconds();
        if idle == 0 {
            return;
        }
        let idle = Duration::from_secs(idle);
        let candidates: Vec<_> = self
            .state
            .sessions
            .values()
            .filter(|s| s.on_demand)
            .filter(|s| !self.agreeing.contains(&s.id) && !self.shown.contains_key(&s.id))
            .map(|s| (s.id, (s.master_sae.clone(), s.slave_sae.clone())))
            .collect();
        for (id, pair) in candidates {
            let last = self.usage.last_use(pair.clone(), now);
            if now.duration_since(last) < idle {
                continue;
            }
            self.usage.forget(&pair);
            self.c.event(
                "session-expired",
                format!(
                    "{} -> {}: no key asked for {} s",
                    pair.0,
                    pair.1,
                    idle.as_secs()
                ),
                Some(id),
                None,
            );
            // nobody waits for the answer
            let (reply, _) = oneshot::channel();
            self.push(Job::Delete { id, reply });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::PairUse;
    use crate::control::topology::AgentView;

    fn view(requests: u64) -> AgentView {
        AgentView {
            pair_requests: [(("m".to_string(), "s".to_string()), requests)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_pair_is_in_use_when_its_counter_moves() {
        let mut usage = PairUse::default();
        let start = Instant::now();
        let pair = || ("m".to_string(), "s".to_string());
        usage.note(&view(3), start);
        let later = start + Duration::from_secs(5);
        usage.note(&view(3), later);
        assert_eq!(usage.last_use(pair(), later), start);
        usage.note(&view(4), later);
        assert_eq!(usage.last_use(pair(), later), later);
        // a restarted KM counts from 0 again: that is use too
        let after = later + Duration::from_secs(5);
        usage.note(&view(1), after);
        assert_eq!(usage.last_use(pair(), after), after);
        // a pair never reported counts from when it is first looked at
        let other = ("m".to_string(), "t".to_string());
        assert_eq!(usage.last_use(other, after), after);
    }
}
