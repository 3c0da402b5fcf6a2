//! The low-key alarm: a task that raises [`Event::LowKey`] when a link's usable blocks at
//! this end fall below the configured threshold.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::km::agent::Agent;
use crate::km::events::Event;

/// Raises a low-key alarm when a link's usable blocks at this end fall below the threshold
/// (once per crossing), checking every second.
pub async fn watch_key_levels(agent: Arc<Agent>) {
    // Pools start empty: an alarm is raised when a pool *falls* below the threshold.
    let mut alarmed: HashSet<String> = agent.links().map(|l| l.config.id.clone()).collect();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let threshold = agent.settings().low_key_threshold_percent;
        if threshold == 0 {
            alarmed.clear();
            continue;
        }
        let links: Vec<(String, u8, usize)> = agent
            .links()
            .map(|l| {
                (
                    l.config.id.clone(),
                    l.config.end.owner(),
                    l.settings().capacity_blocks,
                )
            })
            .collect();
        for (id, owner, capacity) in links {
            let link = id.clone();
            let Ok(own) = agent.store.run(move |s| s.available(&link, owner)).await else {
                continue;
            };
            let limit = capacity / 2 * usize::from(threshold) / 100;
            if own < limit {
                if alarmed.insert(id.clone()) {
                    tracing::warn!(link = %id, own_blocks = own, threshold_percent = threshold, "low key");
                    agent.emit(Event::LowKey {
                        link: id,
                        own_blocks: own,
                        threshold_percent: threshold,
                    });
                }
            } else {
                alarmed.remove(&id);
            }
        }
    }
}
