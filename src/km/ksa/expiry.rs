//! Keys nobody fetches do not stay forever: each key handed to a master SAE gets a deadline
//! for its slave SAEs (`limits.undelivered_key_ttl_seconds`), and a sweep erases keys past
//! it, counting them (`keys-expired` in the state data). The store refuses an expired key
//! even before the sweep has erased it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::km::agent::Agent;
use crate::km::kma::relay::error::RelayError;
use crate::km::store::{deliveries_now_ms, DeliveryTerms, StoreError};

/// Keys erased per transaction of the sweep.
const BATCH: usize = 4096;

/// The terms of keys handed out now.
pub fn terms(agent: &Agent) -> DeliveryTerms {
    let limits = &agent.config.limits;
    DeliveryTerms {
        expires_ms: deliveries_now_ms()
            .saturating_add(limits.undelivered_key_ttl_seconds.saturating_mul(1000)),
        max_per_pair: limits.max_undelivered_keys_per_pair,
    }
}

/// Whether `keys` more keys from `master` may wait for every one of `slaves`; refused with
/// [`RelayError::Backlog`] before anything is consumed.
pub async fn check_room(
    agent: &Arc<Agent>,
    slaves: &[String],
    master: &str,
    keys: usize,
) -> Result<(), RelayError> {
    let max = agent.config.limits.max_undelivered_keys_per_pair;
    for slave in slaves {
        let (s, m) = (slave.clone(), master.to_owned());
        let waiting = agent
            .store
            .run(move |store| store.pair_waiting(&s, &m))
            .await?;
        if waiting.saturating_add(keys as u64) > max {
            let error = StoreError::Backlog {
                slave: slave.clone(),
                master: master.to_owned(),
                waiting,
                max,
            };
            tracing::info!(%error, "keys refused: the slave SAE does not fetch them");
            return Err(RelayError::Backlog(error.to_string()));
        }
    }
    Ok(())
}

/// Erases expired keys every so often (a quarter of their lifetime, at most every second).
pub async fn sweep(agent: Arc<Agent>) {
    let ttl = Duration::from_secs(agent.config.limits.undelivered_key_ttl_seconds);
    let period = (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        loop {
            let now = deliveries_now_ms();
            let erased = agent
                .store
                .run(move |s| {
                    if !s.deliveries_due(now)? {
                        return Ok(Vec::new());
                    }
                    s.write(|txn| txn.expire_deliveries(now, BATCH))
                })
                .await;
            match erased {
                Ok(keys) if keys.is_empty() => break,
                Ok(keys) => {
                    let n = keys.len();
                    agent
                        .counters
                        .keys_expired
                        .fetch_add(n as u64, Ordering::Relaxed);
                    tracing::info!(keys = n, "undelivered keys expired and erased");
                    crate::km::accounting::expired(&agent, &keys).await;
                    if n < BATCH {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot erase expired keys");
                    break;
                }
            }
        }
    }
}
