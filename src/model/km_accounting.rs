//! `qkdni-km:accounting`: a KM's usage summaries as state data (written by the KM agent,
//! read by the manager's KMLM).

use super::km::NAMESPACE;
use super::schema_group;
use crate::km::accounting::summary::{PeriodSummary, Usage, UsageKey};
use crate::km::accounting::Kind;

/// The accounting container.
pub const ACCOUNTING: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/accounting";

schema_group! {
    /// Leaves of the accounting container.
    pub mod accounting under super::ACCOUNTING;
    PERIOD_SECONDS = "period-seconds";
    CLOSED_BEFORE = "closed-before";
    WRITE_FAILURES = "write-failures";
    PERIOD = "period";
    PERIOD_END = "period/end";
    USAGE = "period/usage";
    USAGE_KEYS = "period/usage/keys";
    USAGE_BITS = "period/usage/bits";
    USAGE_DIGEST = "period/usage/key-id-digest";
    USAGE_PENDING = "period/usage/pending";
    TOTAL = "total";
    TOTAL_KEYS = "total/keys";
    TOTAL_BITS = "total/bits";
}

/// Every group of this module.
pub const GROUPS: &[super::Group] = &[accounting::GROUP];

fn quote(value: &str) -> String {
    crate::netconf::xml::quote(value)
}

/// The entry of the period starting at `start` (Unix ms).
pub fn period_entry(start: u64) -> String {
    format!("{ACCOUNTING}/period[start='{start}']")
}

/// The usage entry `key` of the period starting at `start`.
pub fn usage_entry(start: u64, key: &UsageKey) -> String {
    format!(
        "{}/usage[kind='{}'][sae={}][peer-sae={}][peer-domain={}]",
        period_entry(start),
        key.kind.name(),
        quote(&key.sae),
        quote(&key.peer_sae),
        quote(&key.peer_domain)
    )
}

/// The total entry of `key`.
pub fn total_entry(key: &UsageKey) -> String {
    format!(
        "{ACCOUNTING}/total[kind='{}'][sae={}][peer-sae={}][peer-domain={}]",
        key.kind.name(),
        quote(&key.sae),
        quote(&key.peer_sae),
        quote(&key.peer_domain)
    )
}

/// A `<get>` of a KM's accounting only.
pub fn get_accounting() -> String {
    format!(
        r#"<get><filter type="subtree"><qkd_node xmlns="{}"><key-manager xmlns="{NAMESPACE}"><accounting/></key-manager></qkd_node></filter></get>"#,
        super::etsi_node::NAMESPACE
    )
}

/// A KM's accounting as read from its state data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KmAccounting {
    /// Period length, seconds.
    pub period_seconds: u64,
    /// Periods before this (Unix ms) are closed at the KM.
    pub closed_before: u64,
    pub periods: Vec<PeriodSummary>,
}

/// Reads the `accounting` container out of a `<get>` reply (`<data>` or its content).
pub fn parse(xml: &str) -> Result<KmAccounting, String> {
    let wrapped = format!("<r>{xml}</r>");
    let doc = roxmltree::Document::parse(&wrapped).map_err(|e| e.to_string())?;
    let Some(container) = doc
        .descendants()
        .find(|n| n.has_tag_name((NAMESPACE, "accounting")))
    else {
        return Err("no accounting in the reply".into());
    };
    let child = |node: roxmltree::Node, name: &str| {
        node.children()
            .find(|c| c.is_element() && c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let number = |node: roxmltree::Node, name: &str| -> Result<u64, String> {
        let text = child(node, name);
        text.parse()
            .map_err(|_| format!("{name}: {text:?} is not a number"))
    };
    let mut accounting = KmAccounting {
        period_seconds: number(container, "period-seconds")?,
        closed_before: number(container, "closed-before")?,
        periods: Vec::new(),
    };
    for period in container
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "period")
    {
        let mut summary = PeriodSummary {
            start_ms: number(period, "start")?,
            end_ms: number(period, "end")?,
            usage: Vec::new(),
        };
        for usage in period
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "usage")
        {
            let kind = child(usage, "kind");
            summary.usage.push(Usage {
                key: UsageKey {
                    kind: Kind::from_name(&kind).ok_or_else(|| format!("unknown kind {kind}"))?,
                    sae: child(usage, "sae"),
                    peer_sae: child(usage, "peer-sae"),
                    peer_domain: child(usage, "peer-domain"),
                },
                keys: number(usage, "keys")?,
                bits: number(usage, "bits")?,
                key_id_digest: child(usage, "key-id-digest"),
                pending: number(usage, "pending")?,
            });
        }
        accounting.periods.push(summary);
    }
    Ok(accounting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_in_the_schema() {
        super::super::check(GROUPS).unwrap();
    }

    #[test]
    fn accounting_state_is_read_back() {
        let xml = format!(
            r#"<data><qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><key-manager xmlns="{NAMESPACE}"><accounting><period-seconds>2</period-seconds><closed-before>4000</closed-before><write-failures>0</write-failures><period><start>2000</start><end>4000</end><usage><kind>received</kind><sae>sae-b1</sae><peer-sae>sae-a1</peer-sae><peer-domain>A</peer-domain><keys>3</keys><bits>768</bits><key-id-digest>{d}</key-id-digest><pending>1</pending></usage></period><total><kind>received</kind><sae>sae-b1</sae><peer-sae>sae-a1</peer-sae><peer-domain>A</peer-domain><keys>3</keys><bits>768</bits></total></accounting></key-manager></qkd_node></data>"#,
            d = "ab".repeat(32)
        );
        let read = parse(&xml).unwrap();
        assert_eq!(read.period_seconds, 2);
        assert_eq!(read.closed_before, 4000);
        assert_eq!(read.periods.len(), 1);
        let usage = &read.periods[0].usage[0];
        assert_eq!(usage.key.kind, Kind::Received);
        assert_eq!((usage.keys, usage.bits, usage.pending), (3, 768, 1));
        assert!(parse("<data/>").is_err());
    }
}
