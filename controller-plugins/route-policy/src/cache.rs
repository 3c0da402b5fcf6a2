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
    landmarks: Mutex<HashMap<&'static str, Slot>>,
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
        let landmarks: Vec<&'static str> = lock(&self.landmarks)
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
        self.cache().csr.get_or_init(|| Csr::new(self.graph()))
    }

    /// The landmarks of the link cost function named `key` (every call with the same `key`
    /// must pass the same `cost`: finite, `>= 0`), when they pay off: counts one query and
    /// computes them on the [`LANDMARKS_AFTER_QUERIES`]-th (or returns those already
    /// computed, e.g. by [`prepare_landmarks`](Self::prepare_landmarks)); `None` before.
    ///
    /// A snapshot routed once (e.g. `RoutePolicy::route`) thus never pays for landmarks.
    /// Concurrent callers wait while they are computed.
    pub fn landmarks(
        &self,
        key: &'static str,
        cost: impl Fn(&Link) -> f64,
    ) -> Option<Arc<Landmarks>> {
        let mut slots = lock(&self.cache().landmarks);
        let slot = slots.entry(key).or_insert(Slot::Counting(0));
        match slot {
            Slot::Built(landmarks) => Some(landmarks.clone()),
            Slot::Counting(queries) if *queries + 1 < LANDMARKS_AFTER_QUERIES => {
                *queries += 1;
                None
            }
            Slot::Counting(_) => {
                let landmarks = Arc::new(self.compute_landmarks(&cost));
                *slot = Slot::Built(landmarks.clone());
                Some(landmarks)
            }
        }
    }

    /// The landmarks of the link cost function named `key` (see
    /// [`landmarks`](Self::landmarks)), computed now if they are not yet.
    pub fn prepare_landmarks(
        &self,
        key: &'static str,
        cost: impl Fn(&Link) -> f64,
    ) -> Arc<Landmarks> {
        let mut slots = lock(&self.cache().landmarks);
        let slot = slots.entry(key).or_insert(Slot::Counting(0));
        match slot {
            Slot::Built(landmarks) => landmarks.clone(),
            Slot::Counting(_) => {
                let landmarks = Arc::new(self.compute_landmarks(&cost));
                *slot = Slot::Built(landmarks.clone());
                landmarks
            }
        }
    }

    fn compute_landmarks(&self, cost: &impl Fn(&Link) -> f64) -> Landmarks {
        let links = &self.network().links;
        Landmarks::compute(self.csr(), |l| cost(&links[l]), LANDMARK_COUNT)
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
