//! A QoS policy in YANG: read from and written to a `qos` container (`qkdni-km`
//! `key-manager/qos` or `qkdni-controller` `controller/qos`, the same shape), and the KM's
//! per-class figures as state.

use yang2::data::{Data, DataNodeRef, DataTree};

use super::policy::{ClassSpec, QosPolicy, Quota};
use crate::model::qos::{class_entry, class_leaf as leaf, mapping};
use crate::netconf::datastore::{leaf as value, set_leaf as set};
use crate::netconf::{ErrorTag, RpcError};

fn child(node: &DataNodeRef<'_, '_>, path: &str) -> Option<String> {
    node.find_path(path).ok().and_then(|n| n.value_canonical())
}

fn number<T: std::str::FromStr>(node: &DataNodeRef<'_, '_>, path: &str) -> Option<T> {
    child(node, path).and_then(|v| v.parse().ok())
}

/// The policy configured under the container at `qos` (schema-valid), checked whole: an
/// invalid one is an `invalid-value` error at the node it concerns.
pub fn read(tree: &DataTree<'static>, qos: &str) -> Result<QosPolicy, RpcError> {
    let invalid = |message: String, path: String| {
        RpcError::application(ErrorTag::InvalidValue, message).path(path)
    };
    let mut policy = QosPolicy::default();
    for node in tree
        .find_xpath(&format!("{qos}/class"))
        .map_err(RpcError::from)?
    {
        let Some(name) = child(&node, leaf::NAME) else {
            continue;
        };
        let quota = match (
            number::<u64>(&node, leaf::QUOTA_BITS),
            number::<u32>(&node, leaf::QUOTA_PERIOD),
        ) {
            (Some(bits), Some(period_seconds)) => Some(Quota {
                bits,
                period_seconds,
            }),
            _ => None,
        };
        let spec = ClassSpec {
            name: name.clone(),
            priority: number(&node, leaf::PRIORITY).unwrap_or(1),
            guaranteed_bps: number(&node, leaf::GUARANTEED_RATE).unwrap_or(0),
            max_bps: number(&node, leaf::MAXIMUM_RATE),
            quota,
        };
        policy.classes.insert(name, spec);
    }
    for node in tree
        .find_xpath(&format!("{qos}/application-pair"))
        .map_err(RpcError::from)?
    {
        let (Some(a), Some(b), Some(class)) = (
            child(&node, mapping::SAE_A),
            child(&node, mapping::SAE_B),
            child(&node, mapping::CLASS),
        ) else {
            continue;
        };
        let path = node.path();
        if a == b {
            return Err(invalid(
                format!("application pair {a} / {b}: the two SAEs must differ"),
                path,
            ));
        }
        let key = QosPolicy::pair_key(&a, &b);
        if let Some(other) = policy.pairs.get(&key).filter(|c| **c != class) {
            return Err(invalid(
                format!("application pair {a} / {b} is also configured in the other order, with class {other}"),
                path,
            ));
        }
        policy.pairs.insert(key, class);
    }
    for node in tree
        .find_xpath(&format!("{qos}/peer-domain"))
        .map_err(RpcError::from)?
    {
        if let (Some(domain), Some(class)) =
            (child(&node, mapping::DOMAIN), child(&node, mapping::CLASS))
        {
            policy.domains.insert(domain, class);
        }
    }
    policy.default_class = value(tree, &format!("{qos}/default-class"));
    policy.validate().map_err(|e| {
        let at = match &e {
            super::policy::PolicyError::Priority { class }
            | super::policy::PolicyError::MaxBelowGuarantee { class, .. }
            | super::policy::PolicyError::Quota { class } => class_entry(qos, class),
            super::policy::PolicyError::NoDefault => format!("{qos}/default-class"),
            _ => qos.to_owned(),
        };
        invalid(e.to_string(), at)
    })?;
    Ok(policy)
}

/// Writes `policy` as configuration under the container at `qos`.
pub fn write(tree: &mut DataTree<'static>, qos: &str, policy: &QosPolicy) -> Result<(), RpcError> {
    for class in policy.classes.values() {
        let entry = class_entry(qos, &class.name);
        let at = |l: &str| format!("{entry}/{l}");
        set(tree, &at(leaf::PRIORITY), &class.priority.to_string())?;
        set(
            tree,
            &at(leaf::GUARANTEED_RATE),
            &class.guaranteed_bps.to_string(),
        )?;
        if let Some(max) = class.max_bps {
            set(tree, &at(leaf::MAXIMUM_RATE), &max.to_string())?;
        }
        if let Some(q) = class.quota {
            set(tree, &at(leaf::QUOTA_BITS), &q.bits.to_string())?;
            set(tree, &at(leaf::QUOTA_PERIOD), &q.period_seconds.to_string())?;
        }
    }
    let quote = crate::netconf::xml::quote;
    for ((a, b), class) in &policy.pairs {
        let entry = format!(
            "{qos}/application-pair[sae-a={}][sae-b={}]",
            quote(a),
            quote(b)
        );
        set(tree, &format!("{entry}/{}", mapping::CLASS), class)?;
    }
    for (domain, class) in &policy.domains {
        let entry = format!("{qos}/peer-domain[domain={}]", quote(domain));
        set(tree, &format!("{entry}/{}", mapping::CLASS), class)?;
    }
    if let Some(class) = &policy.default_class {
        set(tree, &format!("{qos}/default-class"), class)?;
    }
    Ok(())
}

/// The KM's figures per class (state under `key-manager/qos/class`).
pub fn write_state(tree: &mut DataTree<'static>, qos: &super::Qos) -> Result<(), RpcError> {
    let root = crate::model::qos::KM_QOS;
    for (class, (stats, used)) in qos.stats() {
        let entry = class_entry(root, &class);
        let at = |l: &str| format!("{entry}/{l}");
        set(
            tree,
            &at(leaf::GRANTED_REQUESTS),
            &stats.granted.to_string(),
        )?;
        set(
            tree,
            &at(leaf::GRANTED_BITS),
            &stats.granted_bits.to_string(),
        )?;
        set(tree, &at(leaf::QUOTA_USED_BITS), &used.to_string())?;
        set(
            tree,
            &at(leaf::REFUSED_QUOTA),
            &stats.refused_quota.to_string(),
        )?;
        set(
            tree,
            &at(leaf::REFUSED_WAIT),
            &stats.refused_wait.to_string(),
        )?;
    }
    Ok(())
}
