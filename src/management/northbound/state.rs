//! The manager's state under NETCONF: its domain, how it provisions its controller, and
//! the change log.

use yang2::data::DataTree;

use crate::management::Manager;
use crate::model::manager::{self as model, change, root, ROOT};
use crate::netconf::datastore::set_leaf as set;
use crate::netconf::RpcError;

/// The manager's state tree.
pub(super) fn state(
    manager: &Manager,
    controller: Option<std::net::SocketAddr>,
) -> Result<DataTree<'static>, RpcError> {
    let mut tree = crate::yang::empty();
    let at = |leaf: &str| format!("{ROOT}/{leaf}");
    set(&mut tree, &at(root::DOMAIN), &manager.config.domain)?;
    if let Some(address) = controller {
        set(
            &mut tree,
            &at(root::PROVISIONING_CONTROLLER),
            &address.to_string(),
        )?;
    }
    let provisioning = manager.configuration.provisioning();
    if let Some(time) = &provisioning.last_push {
        set(&mut tree, &at(root::PROVISIONING_LAST_PUSH), time)?;
    }
    if let Some(error) = &provisioning.last_error {
        set(&mut tree, &at(root::PROVISIONING_LAST_ERROR), error)?;
    }
    if let Some(drift) = &provisioning.drift {
        set(&mut tree, &at(root::PROVISIONING_DRIFT), drift)?;
    }
    for entry in manager.configuration.changes() {
        let base = model::change_entry(entry.id);
        set(&mut tree, &format!("{base}/{}", change::TIME), &entry.time)?;
        set(&mut tree, &format!("{base}/{}", change::USER), &entry.user)?;
        set(
            &mut tree,
            &format!("{base}/{}", change::PROVISIONED),
            if entry.provisioned { "true" } else { "false" },
        )?;
        for line in &entry.diff {
            // an XPath literal holds either quote, not both
            let line = if line.contains('\'') && line.contains('"') {
                line.replace('"', "'")
            } else {
                line.clone()
            };
            let quoted = crate::netconf::xml::quote(&line);
            set(
                &mut tree,
                &format!("{base}/{}[.={quoted}]", change::DIFF),
                &line,
            )?;
        }
    }
    Ok(tree)
}
