//! Throttling of password guessing on a NETCONF server.
//!
//! Failed logins are remembered per source address and per user name for a window. Once a
//! source or a user has failed more than a few times, *every* further attempt from that
//! source or for that user waits before its password is even checked, twice as long per
//! failure up to a ceiling: a delay that only failures paid would tell a guesser to give up
//! waiting early. Both maps are bounded (the oldest entry goes), since user names and
//! addresses are the attacker's to choose.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Most sources and most user names remembered.
const MAX_TRACKED: usize = 4096;

/// How failed logins slow down the next attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures within the window allowed before attempts are delayed.
    pub free_failures: u32,
    /// Delay after the first failure beyond the free ones; doubles with each further one.
    pub delay_ms: u64,
    /// Longest delay.
    pub max_delay_ms: u64,
    /// How long a failure counts.
    pub window_seconds: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_failures: 3,
            delay_ms: 250,
            max_delay_ms: 4_000,
            window_seconds: 300,
        }
    }
}

/// Failures of one source or user within the window.
#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
}

/// The failed logins a server remembers.
#[derive(Debug)]
pub struct AuthThrottle {
    config: ThrottleConfig,
    /// How long a failure counts (`config.window_seconds`).
    window: Duration,
    sources: Mutex<HashMap<IpAddr, Record>>,
    users: Mutex<HashMap<String, Record>>,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self::new(ThrottleConfig::default())
    }
}

/// What [`AuthThrottle::fail`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    /// Failures from the source within the window, this one included.
    pub source: u32,
    /// Failures for the user name within the window, this one included.
    pub user: u32,
}

impl AuthThrottle {
    /// A throttle with `config`.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            window: Duration::from_secs(config.window_seconds),
            config,
            sources: Mutex::default(),
            users: Mutex::default(),
        }
    }

    fn window(&self) -> Duration {
        self.window
    }

    fn failures<K: Hash + Eq>(&self, map: &Mutex<HashMap<K, Record>>, key: &K) -> u32 {
        let map = map.lock().expect("throttle");
        map.get(key)
            .filter(|r| r.last.elapsed() < self.window())
            .map_or(0, |r| r.failures)
    }

    /// How long an attempt for `user` from `source` waits before it is checked.
    pub fn delay(&self, source: IpAddr, user: &str) -> Duration {
        let failures = self
            .failures(&self.sources, &source)
            .max(self.failures(&self.users, &user.to_owned()));
        let beyond = failures.saturating_sub(self.config.free_failures);
        if beyond == 0 {
            return Duration::ZERO;
        }
        let factor = 1u64 << (beyond - 1).min(20);
        Duration::from_millis(
            self.config
                .delay_ms
                .saturating_mul(factor)
                .min(self.config.max_delay_ms),
        )
    }

    fn count<K: Hash + Eq + Clone>(&self, map: &Mutex<HashMap<K, Record>>, key: &K) -> u32 {
        let mut map = map.lock().expect("throttle");
        let now = Instant::now();
        let window = self.window();
        if map.len() >= MAX_TRACKED && !map.contains_key(key) {
            map.retain(|_, r| now.duration_since(r.last) < window);
            if map.len() >= MAX_TRACKED {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, r)| r.last)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    map.remove(&oldest);
                }
            }
        }
        let record = map.entry(key.clone()).or_insert(Record {
            failures: 0,
            last: now,
        });
        if now.duration_since(record.last) >= window {
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        record.last = now;
        record.failures
    }

    /// Counts a failed login for `user` from `source`.
    pub fn fail(&self, source: IpAddr, user: &str) -> Failures {
        Failures {
            source: self.count(&self.sources, &source),
            user: self.count(&self.users, &user.to_owned()),
        }
    }

    /// Forgets the failures of `user` after a successful login (the source's stay: a
    /// guesser who owns one account must not clear its record with it).
    pub fn succeed(&self, user: &str) {
        self.users.lock().expect("throttle").remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_source_and_per_user_and_expire() {
        let mut throttle = AuthThrottle::new(ThrottleConfig {
            free_failures: 2,
            delay_ms: 100,
            max_delay_ms: 350,
            window_seconds: 60,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(throttle.delay(a, "root"), Duration::ZERO);
        throttle.fail(a, "root");
        throttle.fail(a, "root");
        assert_eq!(throttle.delay(a, "root"), Duration::ZERO);
        let counted = throttle.fail(a, "root");
        assert_eq!(counted, Failures { source: 3, user: 3 });
        assert_eq!(throttle.delay(a, "other"), Duration::from_millis(100));
        // another source guessing the same user waits too
        assert_eq!(throttle.delay(b, "root"), Duration::from_millis(100));
        throttle.fail(a, "x");
        assert_eq!(throttle.delay(a, "y"), Duration::from_millis(200));
        throttle.fail(a, "x");
        throttle.fail(a, "x");
        assert_eq!(
            throttle.delay(a, "y"),
            Duration::from_millis(350),
            "ceiling"
        );
        // a success clears the user, not the source
        throttle.succeed("root");
        assert_eq!(throttle.delay(b, "root"), Duration::ZERO);
        assert_eq!(throttle.delay(a, "root"), Duration::from_millis(350));
        throttle.window = Duration::from_millis(30);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(throttle.delay(a, "root"), Duration::ZERO);
    }

    #[test]
    fn tracked_names_are_bounded() {
        let throttle = AuthThrottle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..MAX_TRACKED + 10 {
            throttle.fail(a, &format!("user{i}"));
        }
        assert!(throttle.users.lock().unwrap().len() <= MAX_TRACKED);
    }
}
