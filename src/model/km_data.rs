//! A KM agent's data as its `<get>` of `qkd_node` returns it ([`super::etsi_node::GET_NODE`]),
//! read by controllers and managers: the node, its links' state, SAE locations, installed
//! relay routes and ETSI GS QKD 014 use per SAE pair.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::etsi_node::{self, link as etsi_link, node};
use super::km::{etsi014, key_manager, link, route, sae, transfer_link};
use super::{xml_at, xml_child, xml_text as text};

/// What one agent reports (its NETCONF `qkd_node` data, config and state).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentView {
    pub node: String,
    pub links: Vec<LinkView>,
    /// SAE id -> node whose KM serves it.
    pub saes: BTreeMap<String, String>,
    /// Installed relay routes: destination -> next hops (primary first) with weights.
    pub routes: BTreeMap<String, Vec<WeightedHop>>,
    /// SAEs of other QKDNs installed for interworking: SAE id -> (node, domain).
    pub foreign_saes: BTreeMap<String, ForeignSae>,
    /// Get key requests served per (master SAE, slave SAE) pair since the KM started.
    pub pair_requests: BTreeMap<(String, String), u64>,
}

/// An SAE of another QKDN as a KM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForeignSae {
    /// The node (of the other QKDN) whose KM serves it.
    pub node: String,
    pub domain: String,
}

/// One next hop of a relay route and its share of the keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WeightedHop {
    pub node: String,
    pub weight: u64,
}

/// One link seen from one end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub id: String,
    pub peer: String,
    pub up: bool,
    pub rate_bps: f64,
    /// Blocks this end may allocate.
    pub own_blocks: u64,
    pub capacity_blocks: u64,
    /// An interworking node's transfer link (no QKD link: no rate, no pool).
    #[serde(default)]
    pub transfer: bool,
}

/// The last step of an absolute schema path, as a relative step from its parent.
fn step(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The elements of a list at relative `path` under `node` (its entries' parent first).
fn entries<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    path: &str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let parent = if parent.is_empty() {
        Some(node)
    } else {
        xml_at(node, parent)
    };
    let name = super::km::local(name).to_owned();
    parent
        .into_iter()
        .flat_map(|p| p.children())
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

impl AgentView {
    /// Parses the `<data>` content of a `get` of `qkd_node`.
    pub fn parse(xml: &str) -> Result<Self, String> {
        let wrapped = format!("<data>{xml}</data>");
        let doc = crate::netconf::limits::parse(&wrapped).map_err(|e| e.to_string())?;
        let qkd_node = xml_child(doc.root_element(), &etsi_node::NODE[1..])
            .ok_or("no qkd_node in the agent's data")?;
        let name = text(qkd_node, node::NODE_NAME)
            .or_else(|| text(qkd_node, node::QKDN_ID))
            .ok_or("no node-name or qkdn_id")?;
        let mut view = AgentView {
            node: name,
            ..Default::default()
        };
        let number = |n, path| text(n, path).and_then(|t| t.parse::<f64>().ok());
        let links = etsi_node::LINK.trim_start_matches(etsi_node::NODE);
        for entry in entries(qkd_node, &links[1..]) {
            let (Some(id), Some(peer)) = (
                text(entry, etsi_link::LINK_NAME).or_else(|| text(entry, etsi_link::ID)),
                text(entry, link::PEER_NODE),
            ) else {
                continue;
            };
            view.links.push(LinkView {
                id,
                peer,
                up: text(entry, link::OPER_STATE).as_deref() == Some("up"),
                rate_bps: number(entry, link::SECRET_KEY_RATE_BPS).unwrap_or(0.0),
                own_blocks: number(entry, link::OWN_BLOCKS).unwrap_or(0.0) as u64,
                capacity_blocks: number(entry, link::POOL_CAPACITY_BLOCKS).unwrap_or(0.0) as u64,
                transfer: false,
            });
        }
        let Some(km) = xml_child(qkd_node, step(super::km::KEY_MANAGER)) else {
            return Ok(view);
        };
        let transfers = format!(
            "{}/{}",
            key_manager::TRANSFER_LINKS,
            step(super::km::TRANSFER_LINK)
        );
        for entry in entries(km, &transfers) {
            if let (Some(id), Some(peer)) = (
                text(entry, transfer_link::ID),
                text(entry, transfer_link::PEER_NODE),
            ) {
                view.links.push(LinkView {
                    id,
                    peer,
                    up: text(entry, transfer_link::OPER_STATE).as_deref() == Some("up"),
                    rate_bps: 0.0,
                    own_blocks: 0,
                    capacity_blocks: 0,
                    transfer: true,
                });
            }
        }
        let saes = format!("{}/{}", key_manager::SAES, step(super::km::SAE));
        for entry in entries(km, &saes) {
            if let (Some(id), Some(at)) = (text(entry, sae::ID), text(entry, sae::NODE)) {
                match text(entry, sae::DOMAIN) {
                    Some(domain) => {
                        view.foreign_saes
                            .insert(id, ForeignSae { node: at, domain });
                    }
                    None => {
                        view.saes.insert(id, at);
                    }
                }
            }
        }
        let weight = |n| {
            text(n, route::WEIGHT)
                .and_then(|w| w.parse().ok())
                .unwrap_or(1)
        };
        let routes = format!("{}/{}", key_manager::RELAY_ROUTES, step(super::km::ROUTE));
        for entry in entries(km, &routes) {
            if let (Some(dest), Some(hop)) = (
                text(entry, route::DESTINATION),
                text(entry, route::NEXT_HOP),
            ) {
                let mut hops = vec![WeightedHop {
                    node: hop,
                    weight: weight(entry),
                }];
                for alternate in entries(entry, route::ALTERNATE) {
                    if let Some(node) = text(alternate, route::NEXT_HOP) {
                        hops.push(WeightedHop {
                            node,
                            weight: weight(alternate),
                        });
                    }
                }
                view.routes.insert(dest, hops);
            }
        }
        let pairs = format!("{}/{}", key_manager::ETSI014, etsi014::PAIR);
        for pair in entries(km, &pairs) {
            let leaf = |path: &str| text(pair, super::km::local(path));
            if let (Some(master), Some(slave), Some(requests)) = (
                leaf(etsi014::PAIR_MASTER),
                leaf(etsi014::PAIR_SLAVE),
                leaf(etsi014::PAIR_REQUESTS).and_then(|r| r.parse().ok()),
            ) {
                view.pair_requests.insert((master, slave), requests);
            }
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_data_is_read() {
        let xml = r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_id>7eec982d-9ca7-59e0-b252-c124f3522b41</qkdn_id><node-name xmlns="urn:qkdni:yang:qkdni-etsi-ids">a1</node-name><qkd_links><qkd_link><qkdl_id>bccd9e3d-7cf3-5be0-97c1-ae02f598e71f</qkdl_id><link-name xmlns="urn:qkdni:yang:qkdni-etsi-ids">a1-a2</link-name><peer-node xmlns="urn:qkdni:yang:qkdni-km">a2</peer-node><oper-state xmlns="urn:qkdni:yang:qkdni-km">up</oper-state><secret-key-rate-bps xmlns="urn:qkdni:yang:qkdni-km">1000.000</secret-key-rate-bps><key-pool xmlns="urn:qkdni:yang:qkdni-km"><own-blocks>12</own-blocks><capacity-blocks>64</capacity-blocks></key-pool></qkd_link></qkd_links><key-manager xmlns="urn:qkdni:yang:qkdni-km"><saes><sae><sae-id>s1</sae-id><node>a1</node></sae><sae><sae-id>sb1</sae-id><node>b1</node><domain>B</domain></sae></saes><transfer-links><transfer-link><link-id>iwn1-kxi1p</link-id><peer-node>iwn1-b</peer-node><peer-domain>B</peer-domain><oper-state>up</oper-state></transfer-link></transfer-links><relay-routes><route><destination>a3</destination><next-hop>a2</next-hop><alternate><next-hop>a4</next-hop><weight>2</weight></alternate></route></relay-routes><etsi014><keys-supplied>3</keys-supplied><pair><master-sae>s1</master-sae><slave-sae>s3</slave-sae><requests>2</requests><keys>3</keys></pair></etsi014></key-manager></qkd_node>"#;
        let view = AgentView::parse(xml).unwrap();
        assert_eq!(view.node, "a1");
        assert_eq!(view.links[0].id, "a1-a2");
        assert_eq!(view.links[0].own_blocks, 12);
        assert_eq!(view.links[0].capacity_blocks, 64);
        assert_eq!(view.links[0].rate_bps, 1000.0);
        assert!(view.links[0].up);
        assert!(!view.links[0].transfer);
        let transfer = &view.links[1];
        assert_eq!(
            (transfer.id.as_str(), transfer.peer.as_str()),
            ("iwn1-kxi1p", "iwn1-b")
        );
        assert!(transfer.transfer && transfer.up);
        assert_eq!(view.saes["s1"], "a1");
        assert_eq!(view.foreign_saes["sb1"].domain, "B");
        assert_eq!(view.routes["a3"][0].node, "a2");
        assert_eq!(
            view.routes["a3"][1],
            WeightedHop {
                node: "a4".into(),
                weight: 2
            }
        );
        assert_eq!(view.pair_requests[&("s1".into(), "s3".into())], 2);
    }
}
