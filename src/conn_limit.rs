//! Connection caps of a listener, in total and per source address, and the process's file
//! descriptor limit.
//!
//! Every listener of qkdni (NETCONF over SSH, the HTTPS APIs) admits a connection only while
//! it holds fewer than its cap, and fewer than its per-source cap from the connection's
//! address; anything beyond is closed at once, before a handshake costs anything. Each
//! listener has its own caps, all well below the process's descriptor limit, so a flood of
//! idle connections to one port (20 000 to NETCONF in issue 15) can no longer use up the
//! descriptors that the ETSI 014 API and the operator need.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Caps on the connections one listener holds open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Most connections held open at once.
    pub max_connections: usize,
    /// Most connections held open at once from one source address.
    pub max_per_source: usize,
}

impl ConnectionLimits {
    /// Caps of `max_connections` in total and `max_per_source` from one address.
    pub const fn new(max_connections: usize, max_per_source: usize) -> Self {
        Self {
            max_connections,
            max_per_source,
        }
    }
}

/// The connections a listener holds, by source address.
#[derive(Clone)]
pub struct Admission {
    limits: ConnectionLimits,
    held: Arc<Mutex<Held>>,
    /// What the listener is called in logs.
    name: &'static str,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Connections refused since start.
    refused: u64,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    held: Arc<Mutex<Held>>,
    source: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("admission");
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

impl Admission {
    /// An empty listener named `name` with `limits`.
    pub fn new(name: &'static str, limits: ConnectionLimits) -> Self {
        Self {
            limits,
            held: Arc::default(),
            name,
        }
    }

    /// Admits a connection from `source`, or `None` when a cap is reached (logged once per
    /// 1 000 refusals, so that a flood does not flood the log too).
    pub fn admit(&self, source: IpAddr) -> Option<Admitted> {
        let mut held = self.held.lock().expect("admission");
        let from_source = held.by_source.get(&source).copied().unwrap_or(0);
        if held.total >= self.limits.max_connections || from_source >= self.limits.max_per_source {
            held.refused += 1;
            if held.refused % 1000 == 1 {
                tracing::warn!(
                    listener = self.name,
                    %source,
                    open = held.total,
                    from_source,
                    refused = held.refused,
                    "connection cap reached: closing new connections"
                );
            }
            return None;
        }
        held.total += 1;
        *held.by_source.entry(source).or_default() += 1;
        Some(Admitted {
            held: self.held.clone(),
            source,
        })
    }

    /// Connections held open now.
    pub fn open(&self) -> usize {
        self.held.lock().expect("admission").total
    }
}

/// Raises the soft limit on open file descriptors to the hard limit; returns the new soft
/// limit. Daemons call it at start: every connection costs a descriptor, and the default
/// soft limit (often 1 024) is far below what the connection caps allow.
pub fn raise_fd_limit() -> Result<u64, nix::Error> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// Warns when the connection caps of a process's listeners (`(listener, cap)`), plus a
/// margin for its own files and outgoing connections, exceed its descriptor limit: a flood
/// could then take descriptors the other listeners need. Returns whether they fit.
pub fn check_fd_budget(caps: &[(&str, usize)]) -> bool {
    const MARGIN: u64 = 256;
    let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    else {
        return true;
    };
    let total: u64 = caps.iter().map(|(_, cap)| *cap as u64).sum();
    if total + MARGIN > soft {
        tracing::warn!(
            ?caps,
            fd_limit = soft,
            "the listeners' connection caps exceed the open file limit: lower them or raise the limit"
        );
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_source_and_places_come_back() {
        let admission = Admission::new("test", ConnectionLimits::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert!(admission.admit(a).is_none(), "per-source cap");
        let _b1 = admission.admit(b).unwrap();
        assert!(admission.admit(b).is_none(), "total cap");
        drop(a1);
        assert_eq!(admission.open(), 2);
        assert!(admission.admit(a).is_some());
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let soft = raise_fd_limit().unwrap();
        let (now, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, now), (hard, hard));
        assert!(check_fd_budget(&[("small", 16)]));
        assert!(!check_fd_budget(&[("huge", 1 << 40)]));
    }
}
