//! The KM agent's state under NETCONF: its ETSI node state, and per link the live state,
//! key rate and key pool; the ETSI GS QKD 014 counters, per SAE pair too.

use std::sync::atomic::Ordering;

use yang2::data::DataTree;

use super::{decimal, etsi_node, link_path};
use crate::km::agent::Agent;
use crate::km::store::StoreError;
use crate::model::km::{self as model, etsi014, link, link_state_value as state_name};
use crate::netconf::datastore::set_leaf as set;
use crate::netconf::{ErrorTag, RpcError};

/// The refusals container: counts by reference point and reason, alarms.
fn write_refusals(
    tree: &mut DataTree<'static>,
    report: &crate::refusals::RefusalReport,
) -> Result<(), RpcError> {
    use crate::model::km::refusals as leaf;
    set(
        tree,
        &format!("{}/{}", model::REFUSALS, leaf::ALARMS),
        &report.alarms.to_string(),
    )?;
    for count in &report.counts {
        set(
            tree,
            &format!(
                "{}/{}[reference-point={}][reason={}]/count",
                model::REFUSALS,
                leaf::REFUSAL,
                crate::netconf::xml::quote(count.point.as_str()),
                crate::netconf::xml::quote(&count.reason)
            ),
            &count.count.to_string(),
        )?;
    }
    Ok(())
}

/// The agent's state tree.
pub(super) fn state(agent: &Agent) -> Result<DataTree<'static>, RpcError> {
    let mut tree = crate::yang::empty();
    etsi_node::write_state(&mut tree, agent)?;
    super::transfer::write_state(&mut tree, agent)?;
    super::local_control::write_state(&mut tree, agent)?;
    crate::km::accounting::yang::write_state(&mut tree, agent)?;
    write_refusals(&mut tree, &agent.refusals.report())?;
    crate::km::qos::yang::write_state(&mut tree, &agent.qos)?;
    let store_err = |e: StoreError| RpcError::application(ErrorTag::OperationFailed, e.to_string());
    for link in agent.links() {
        let c = &link.config;
        let base = link_path(agent, &c.id);
        let condition = link.condition();
        let own = agent
            .store
            .available(&c.id, c.end.owner())
            .map_err(store_err)?;
        let peer = agent
            .store
            .available(&c.id, 1 - c.end.owner())
            .map_err(store_err)?;
        let pending = agent.store.pending(&c.id).map_err(store_err)?;
        set(
            &mut tree,
            &format!("{base}/{}", link::OPER_STATE),
            state_name(condition.state),
        )?;
        if let Some(qber) = condition.qber {
            set(
                &mut tree,
                &format!("{base}/{}", link::QBER),
                &decimal(qber, 6),
            )?;
        }
        set(
            &mut tree,
            &format!("{base}/{}", link::SECRET_KEY_RATE_BPS),
            &format!("{:.3}", condition.rate_bps),
        )?;
        set(
            &mut tree,
            &format!("{base}/{}", link::OWN_BLOCKS),
            &own.to_string(),
        )?;
        set(
            &mut tree,
            &format!("{base}/{}", link::PEER_BLOCKS),
            &peer.to_string(),
        )?;
        set(
            &mut tree,
            &format!("{base}/{}", link::PENDING_BLOCKS),
            &pending.to_string(),
        )?;
        set(
            &mut tree,
            &format!("{base}/{}", link::POOL_CAPACITY_BLOCKS),
            &condition.capacity_blocks.to_string(),
        )?;
        set(
            &mut tree,
            &format!("{base}/{}", link::CONSUMED_BLOCKS),
            &link.consumed_blocks.load(Ordering::Relaxed).to_string(),
        )?;
        let fill = 100.0 * (own + peer + pending) as f64 / condition.capacity_blocks.max(1) as f64;
        set(
            &mut tree,
            &format!("{base}/{}", link::FILL_PERCENT),
            &format!("{:.2}", fill.min(100.0)),
        )?;
    }
    let counters = &agent.counters;
    set(
        &mut tree,
        &model::etsi014_leaf(etsi014::KEYS_SUPPLIED),
        &counters.keys_supplied.load(Ordering::Relaxed).to_string(),
    )?;
    set(
        &mut tree,
        &model::etsi014_leaf(etsi014::KEYS_DELIVERED),
        &counters.keys_delivered.load(Ordering::Relaxed).to_string(),
    )?;
    let waiting = agent.store.deliveries_waiting().map_err(store_err)?;
    set(
        &mut tree,
        &model::etsi014_leaf(etsi014::DELIVERIES_WAITING),
        &waiting.to_string(),
    )?;
    for (leaf, counter) in [
        (etsi014::KEYS_EXPIRED, &counters.keys_expired),
        (etsi014::REQUESTS_SHED, &counters.requests_shed),
    ] {
        set(
            &mut tree,
            &model::etsi014_leaf(leaf),
            &counter.load(Ordering::Relaxed).to_string(),
        )?;
    }
    let pairs = counters
        .pairs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for ((master, slave), used) in pairs {
        let base = model::pair_entry(&master, &slave);
        let leaf = |path: &str| format!("{base}/{}", model::local(path));
        set(
            &mut tree,
            &leaf(etsi014::PAIR_REQUESTS),
            &used.requests.to_string(),
        )?;
        set(&mut tree, &leaf(etsi014::PAIR_KEYS), &used.keys.to_string())?;
    }
    Ok(tree)
}
