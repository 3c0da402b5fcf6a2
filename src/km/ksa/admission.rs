//! Admission control of the ETSI GS QKD 014 API: at most so many requests in progress per KM
//! and per SAE; any request beyond is answered at once with 503, `Retry-After` and the
//! standard's error body, instead of queueing (issue 15: 1 000-3 000 concurrent clients made
//! a KM queue for seconds, with hundreds of threads). This file counts and refuses; the ETSI
//! 014 router's middleware ([`crate::km::ksa`]) answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::km::limits::KmLimits;

/// ETSI 014 requests in progress, in total and per SAE.
pub struct RequestAdmission {
    max_total: usize,
    max_per_sae: usize,
    held: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    total: usize,
    /// By calling SAE ("" for callers without a certificate).
    by_sae: HashMap<String, usize>,
}

/// A request admitted; dropping it frees its place.
pub struct Permit {
    held: Arc<Mutex<Held>>,
    sae: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("admission");
        held.total -= 1;
        if let Some(n) = held.by_sae.get_mut(&self.sae) {
            *n -= 1;
            if *n == 0 {
                held.by_sae.remove(&self.sae);
            }
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The KM handles its maximum of requests.
    Km(usize),
    /// The calling SAE has its maximum of requests in progress.
    Sae(usize),
}

impl RequestAdmission {
    /// Admission under `limits`.
    pub fn new(limits: &KmLimits) -> Self {
        Self {
            max_total: limits.etsi014_max_requests,
            max_per_sae: limits.etsi014_max_requests_per_sae,
            held: Arc::default(),
        }
    }

    /// Admits a request of `sae`, or says why not.
    pub fn enter(&self, sae: &str) -> Result<Permit, Refusal> {
        let mut held = self.held.lock().expect("admission");
        if held.total >= self.max_total {
            return Err(Refusal::Km(self.max_total));
        }
        let of_sae = held.by_sae.get(sae).copied().unwrap_or(0);
        if of_sae >= self.max_per_sae {
            return Err(Refusal::Sae(self.max_per_sae));
        }
        held.total += 1;
        *held.by_sae.entry(sae.to_owned()).or_default() += 1;
        Ok(Permit {
            held: self.held.clone(),
            sae: sae.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_km_and_per_sae() {
        let admission = RequestAdmission::new(&KmLimits {
            etsi014_max_requests: 3,
            etsi014_max_requests_per_sae: 2,
            ..KmLimits::default()
        });
        let a1 = admission.enter("a").unwrap();
        let _a2 = admission.enter("a").unwrap();
        assert_eq!(admission.enter("a").err(), Some(Refusal::Sae(2)));
        let _b1 = admission.enter("b").unwrap();
        assert_eq!(admission.enter("c").err(), Some(Refusal::Km(3)));
        drop(a1);
        assert!(admission.enter("a").is_ok());
    }
}
