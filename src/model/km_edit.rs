//! The edit a controller installs on a KM: relay routes and foreign SAE entries of
//! `qkdni-km`, replaced or removed, in one `<edit-config>` of the candidate.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::km::{route, sae, NAMESPACE};
use super::km_data::{ForeignSae, WeightedHop};
use crate::netconf::client::text;

/// The `<edit-config>` (candidate) that installs relay route and foreign SAE changes on a
/// KM: `Some` replaces an entry, `None` removes it.
pub fn relay_edit(
    routes: &BTreeMap<String, Option<Vec<WeightedHop>>>,
    foreign_saes: &BTreeMap<String, Option<ForeignSae>>,
) -> String {
    let (dest, next, weight) = (route::DESTINATION, route::NEXT_HOP, route::WEIGHT);
    let mut xml = String::new();
    for (destination, hops) in routes {
        let destination = text(destination);
        match hops.as_deref() {
            Some([primary, alternates @ ..]) => {
                let _ = write!(
                    xml,
                    "<route nc:operation=\"replace\"><{dest}>{destination}</{dest}><{next}>{}</{next}><{weight}>{}</{weight}>",
                    text(&primary.node),
                    primary.weight.max(1)
                );
                for alternate in alternates {
                    let _ = write!(
                        xml,
                        "<{a}><{next}>{}</{next}><{weight}>{}</{weight}></{a}>",
                        text(&alternate.node),
                        alternate.weight.max(1),
                        a = route::ALTERNATE,
                    );
                }
                xml.push_str("</route>");
            }
            _ => {
                let _ = write!(
                    xml,
                    "<route nc:operation=\"remove\"><{dest}>{destination}</{dest}></route>"
                );
            }
        }
    }
    let routes = xml;
    let (id, node, domain) = (sae::ID, sae::NODE, sae::DOMAIN);
    let mut saes = String::new();
    for (sae, entry) in foreign_saes {
        let sae = text(sae);
        let _ = match entry {
            Some(entry) => write!(
                saes,
                "<sae nc:operation=\"replace\"><{id}>{sae}</{id}><{node}>{}</{node}><{domain}>{}</{domain}></sae>",
                text(&entry.node),
                text(&entry.domain)
            ),
            None => write!(saes, "<sae nc:operation=\"remove\"><{id}>{sae}</{id}></sae>"),
        };
    }
    format!(
        "<edit-config><target><candidate/></target><config xmlns:nc=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><qkd_node xmlns=\"{}\"><key-manager xmlns=\"{NAMESPACE}\"><relay-routes>{routes}</relay-routes><saes>{saes}</saes></key-manager></qkd_node></config></edit-config>",
        super::etsi_node::NAMESPACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_edit_names_the_model_nodes() {
        let routes = BTreeMap::from([
            (
                "a3".to_owned(),
                Some(vec![
                    WeightedHop {
                        node: "a2".into(),
                        weight: 3,
                    },
                    WeightedHop {
                        node: "a4".into(),
                        weight: 0,
                    },
                ]),
            ),
            ("a9".to_owned(), None),
        ]);
        let saes = BTreeMap::from([(
            "sb1".to_owned(),
            Some(ForeignSae {
                node: "b1".into(),
                domain: "B".into(),
            }),
        )]);
        let edit = relay_edit(&routes, &saes);
        assert!(edit.contains("<route nc:operation=\"replace\"><destination>a3</destination><next-hop>a2</next-hop><weight>3</weight><alternate><next-hop>a4</next-hop><weight>1</weight></alternate></route>"));
        assert!(
            edit.contains("<route nc:operation=\"remove\"><destination>a9</destination></route>")
        );
        assert!(edit.contains("<sae nc:operation=\"replace\"><sae-id>sb1</sae-id><node>b1</node><domain>B</domain></sae>"));
    }
}
