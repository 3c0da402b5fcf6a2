//! Search structures a [`PreparedNetwork`] builds on demand and keeps for its snapshot: the
//! CSR adjacency, landmark distances per cost function, and reusable search buffers.
//!
//! They live exactly as long as the prepared snapshot, which borrows the [`KeyNetwork`]
//! immutably: no link can go up, down or change weight while they exist. Landmark lower
//! bounds therefore never go stale; a changed network is a new snapshot, prepared anew, with
//! landmarks computed anew on its own weights.
//!
//! [`KeyNetwork`]: crate::KeyNetwork

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::landmarks::LANDMARK_COUNT;
use crate::{Csr, Landmarks, Link, PreparedNetwork, SearchScratch};

/// Queries with one cost function a snapshot answers before [`PreparedNetwork::landmarks`]
/// computes that function's landmarks (a computation costs about as much as
/// [`LANDMARK_COUNT`]` + 1` full Dijkstra runs, a query with landmarks a small fraction of
/// one, so this many queries pay for it).
pub const LANDMARKS_AFTER_QUERIES: u32 = 32;

/// Landmark sets (cost functions) a snapshot computes at most; more cost functions get none
/// (their searches run without landmarks). Each set holds [`LANDMARK_COUNT`] `f32` per node.
pub const MAX_LANDMARK_SETS: usize = 8;

/// Names a link cost function landmarks are computed on: a name, and a number telling apart
/// the members of a family of functions (e.g. one per demand class; 0 when alone).
pub type LandmarkKey = (&'static str, u64);

/// The landmarks of one cost function: not computed yet (queries so far), or computed.
#[derive(Clone)]
enum Slot {
    Counting(u32),
    Built(Arc<Landmarks>),
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct SearchCache {
    csr: OnceLock<Csr>,
    landmarks: Mutex<HashMap<LandmarkKey, Slot>>,
    scratch: Mutex<Vec<SearchScratch>>,
}

/// Locks `m`, also after a panic in another holder (the data stays consistent: every
/// critical section either completes or leaves a slot untouched).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Clone for SearchCache {
    /// Shares the computed structures (same snapshot, still valid); scratch buffers are not
    /// copied.
    fn clone(&self) -> Self {
        Self {
            csr: self.csr.clone(),
            landmarks: Mutex::new(lock(&self.landmarks).clone()),
            scratch: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for SearchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let landmarks: Vec<LandmarkKey> = lock(&self.landmarks)
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Built(_)))
            .map(|(key, _)| *key)
            .collect();
        f.debug_struct("SearchCache")
            .field("csr", &self.csr.get().is_some())
            .field("landmarks", &landmarks)
            .finish_non_exhaustive()
    }
}

impl PreparedNetwork<'_> {
    /// The CSR adjacency of [`graph`](Self::graph), built on first use.
    pub fn csr(&self) -> &Csr {
        self.cache()
            .csr
            .get_or_init(|| Csr::new(self.graph(), &self.network().links))
    }

    /// The landmarks of the link cost function named `key` (every call with the same `key`
    /// must pass the same `cost`, see [`Landmarks::compute`]), when they pay off: counts one
    /// query and computes them on the [`LANDMARKS_AFTER_QUERIES`]-th (or returns those
    /// already computed, e.g. by [`prepare_landmarks`](Self::prepare_landmarks)); `None`
    /// before, and for good once the snapshot holds [`MAX_LANDMARK_SETS`] other sets.
    ///
    /// A snapshot routed once (e.g. `RoutePolicy::route`) thus never pays for them.
    /// Concurrent callers wait while they are computed.
    pub fn landmarks(
        &self,
        key: LandmarkKey,
        cost: impl Fn(&Link) -> f64,
    ) -> Option<Arc<Landmarks>> {
        self.landmarks_after(key, cost, LANDMARKS_AFTER_QUERIES)
    }

    /// The landmarks of the link cost function named `key` (see
    /// [`landmarks`](Self::landmarks)), computed now if they are not yet; `None` when the
    /// snapshot already holds [`MAX_LANDMARK_SETS`] other sets.
    pub fn prepare_landmarks(
        &self,
        key: LandmarkKey,
        cost: impl Fn(&Link) -> f64,
    ) -> Option<Arc<Landmarks>> {
        self.landmarks_after(key, cost, 1)
    }

    /// The landmarks of `key`, computed at the `queries`-th call for it.
    fn landmarks_after(
        &self,
        key: LandmarkKey,
        cost: impl Fn(&Link) -> f64,
        queries: u32,
    ) -> Option<Arc<Landmarks>> {
        let mut slots = lock(&self.cache().landmarks);
        let built = slots
            .values()
            .filter(|s| matches!(s, Slot::Built(_)))
            .count();
        let slot = slots.entry(key).or_insert(Slot::Counting(0));
        match slot {
            Slot::Built(landmarks) => Some(landmarks.clone()),
            Slot::Counting(seen) if *seen + 1 < queries || built >= MAX_LANDMARK_SETS => {
                *seen = seen.saturating_add(1);
                None
            }
            Slot::Counting(_) => {
                let links = &self.network().links;
                let landmarks = Landmarks::compute(self.csr(), |l| cost(&links[l]), LANDMARK_COUNT);
                let landmarks = Arc::new(landmarks);
                *slot = Slot::Built(landmarks.clone());
                Some(landmarks)
            }
        }
    }

    /// Runs `f` with search buffers sized for this graph, taken from a pool the snapshot
    /// keeps (one set per concurrent caller), so that repeated queries allocate nothing of
    /// the size of the graph.
    pub fn with_scratch<R>(&self, f: impl FnOnce(&mut SearchScratch) -> R) -> R {
        let mut scratch = lock(&self.cache().scratch).pop().unwrap_or_default();
        let result = f(&mut scratch);
        lock(&self.cache().scratch).push(scratch);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyNetwork;

    fn net() -> KeyNetwork {
        let mut net = KeyNetwork::new();
        for id in ["a", "b", "c"] {
            net.add_node(id);
        }
        net.add_link(Link::new("ab", "a", "b", 1.0));
        net.add_link(Link::new("bc", "b", "c", 1.0));
        net
    }

    #[test]
    fn landmarks_come_once_they_pay_off() {
        let net = net();
        let p = PreparedNetwork::new(&net).unwrap();
        for _ in 1..LANDMARKS_AFTER_QUERIES {
            assert!(p.landmarks(("w", 0), Link::cost).is_none());
        }
        let first = p.landmarks(("w", 0), Link::cost).unwrap();
        let again = p.landmarks(("w", 0), Link::cost).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert!(p.prepare_landmarks(("other", 1), |_| 2.0).is_some());
        // A clone shares what was computed (same snapshot).
        let copy = p.clone();
        assert!(Arc::ptr_eq(
            &copy.landmarks(("w", 0), Link::cost).unwrap(),
            &first
        ));
    }

    #[test]
    fn at_most_max_sets() {
        let net = net();
        let p = PreparedNetwork::new(&net).unwrap();
        for i in 0..MAX_LANDMARK_SETS as u64 {
            assert!(p.prepare_landmarks(("w", i), Link::cost).is_some());
        }
        assert!(p.prepare_landmarks(("w", 99), Link::cost).is_none());
        assert!(p.prepare_landmarks(("w", 0), Link::cost).is_some());
    }

    #[test]
    fn scratch_is_reused() {
        let net = net();
        let p = PreparedNetwork::new(&net).unwrap();
        p.with_scratch(|s| s.begin(3));
        p.with_scratch(|s| {
            // The buffers sized by the first call come back.
            s.begin(3);
            assert!(!s.reached(0));
        });
        assert_eq!(lock(&p.cache().scratch).len(), 1);
    }
}
