//! The accounting state under NETCONF (`qkdni-km:accounting`): the summaries of the
//! periods held, the totals over them and the time before which periods are closed.

use yang2::data::DataTree;

use crate::km::agent::Agent;
use crate::model::km_accounting::{self as model, accounting as leaf};
use crate::netconf::datastore::set_leaf as set;
use crate::netconf::{ErrorTag, RpcError};

/// Writes the agent's accounting into `tree`.
pub fn write_state(tree: &mut DataTree<'static>, agent: &Agent) -> Result<(), RpcError> {
    let accounting = &agent.accounting;
    let (periods, closed) = accounting
        .summaries(super::key_ttl_ms(agent))
        .map_err(|e| RpcError::application(ErrorTag::OperationFailed, e.to_string()))?;
    let base = model::ACCOUNTING;
    set(
        tree,
        &format!("{base}/{}", leaf::PERIOD_SECONDS),
        &accounting.config.period_seconds.max(1).to_string(),
    )?;
    set(
        tree,
        &format!("{base}/{}", leaf::CLOSED_BEFORE),
        &closed.to_string(),
    )?;
    set(
        tree,
        &format!("{base}/{}", leaf::WRITE_FAILURES),
        &accounting.write_failures().to_string(),
    )?;
    for period in &periods {
        set(
            tree,
            &format!("{}/end", model::period_entry(period.start_ms)),
            &period.end_ms.to_string(),
        )?;
        for usage in &period.usage {
            let entry = model::usage_entry(period.start_ms, &usage.key);
            for (name, value) in [
                ("keys", usage.keys.to_string()),
                ("bits", usage.bits.to_string()),
                ("key-id-digest", usage.key_id_digest.clone()),
                ("pending", usage.pending.to_string()),
            ] {
                set(tree, &format!("{entry}/{name}"), &value)?;
            }
        }
    }
    for (key, (keys, bits)) in super::summary::totals(&periods) {
        let entry = model::total_entry(&key);
        set(tree, &format!("{entry}/keys"), &keys.to_string())?;
        set(tree, &format!("{entry}/bits"), &bits.to_string())?;
    }
    Ok(())
}
