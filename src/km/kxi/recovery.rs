//! Settlement of transfers an earlier run left unsettled, and retries of pending voids.

use std::sync::Arc;

use crate::km::agent::Agent;

/// Runs for the agent's life.
pub async fn run(_agent: Arc<Agent>) {}
