//! Identifiers of the ETSI GS QKD 015 node model (`etsi-qkd-sdn-node`) for qkdni's named
//! nodes, links, interfaces and applications.
//!
//! The standard types node, link and application identifiers as UUIDs; qkdni names them
//! (`a1`, `a1-a2`, `sae-a1-1`). Each UUID is a name-based UUID version 5 (RFC 9562, SHA-1)
//! in qkdni's own namespace, so it is the same after every restart and on every machine,
//! and whoever knows the names (the testbed, the controller, a Python client with
//! `uuid.uuid5`) computes it without asking. The names themselves are served beside the
//! UUIDs as augmentations (`qkdni-etsi-ids`).
//!
//! Names are qualified with the QKDN (domain) they belong to: node names are unique only
//! inside a domain. A Qx link between gateway nodes of two domains has one identifier at
//! both of its ends, derived from both domains in sorted order.

use sha1::{Digest, Sha1};
use uuid::{Builder, Uuid};

/// qkdni's namespace for name-based UUIDs: UUIDv5 of the URL namespace and
/// `urn:qkdni:etsi-qkd-015`.
pub fn namespace() -> Uuid {
    v5(&Uuid::NAMESPACE_URL, NAMESPACE_NAME)
}

/// The name [`namespace`] is derived from (in the URL namespace of RFC 9562).
pub const NAMESPACE_NAME: &str = "urn:qkdni:etsi-qkd-015";

/// A name-based UUID, version 5 (RFC 9562 section 5.5).
pub fn v5(namespace: &Uuid, name: &str) -> Uuid {
    let mut hash = Sha1::new();
    hash.update(namespace.as_bytes());
    hash.update(name.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Builder::from_sha1_bytes(bytes).into_uuid()
}

/// `qkdn_id` of node `node` of QKDN `domain`.
pub fn node_id(domain: &str, node: &str) -> Uuid {
    v5(&namespace(), &format!("node/{domain}/{node}"))
}

/// `qkdl_id` of link `link` between nodes of QKDN `domain` and, for a Qx link, the peer
/// QKDN `peer_domain` (the same identifier at both ends).
pub fn link_id(domain: &str, peer_domain: Option<&str>, link: &str) -> Uuid {
    let (a, b) = match peer_domain {
        Some(peer) if peer < domain => (peer, domain),
        Some(peer) => (domain, peer),
        None => (domain, domain),
    };
    v5(&namespace(), &format!("link/{a}/{b}/{link}"))
}

/// `app_id` of the key stream that SAE `master` of QKDN `domain` obtains for SAE `slave`.
pub fn app_id(domain: &str, master: &str, slave: &str) -> Uuid {
    v5(&namespace(), &format!("app/{domain}/{master}/{slave}"))
}

/// `qkdi_id` of this node's QKD module (interface) on the link with identifier `link`: the
/// first 31 bits of the link's UUID, so stable and, within a node, unique in practice.
pub fn interface_id(link: &Uuid) -> u32 {
    let b = link.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_matches_the_rfc_algorithm() {
        // Python: uuid.uuid5(uuid.NAMESPACE_DNS, "python.org")
        assert_eq!(
            v5(&Uuid::NAMESPACE_DNS, "python.org").to_string(),
            "886313e1-3b8a-5372-9b90-0c9aee199e5d"
        );
    }

    #[test]
    fn identifiers_are_stable_and_distinct() {
        // Python: uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "urn:qkdni:etsi-qkd-015"), "node/A/a1")
        assert_eq!(
            node_id("A", "a1").to_string(),
            "7eec982d-9ca7-59e0-b252-c124f3522b41"
        );
        assert_ne!(node_id("A", "a1"), node_id("B", "a1"));
        assert_eq!(node_id("A", "a1").get_version_num(), 5);
        assert_eq!(
            link_id("A", Some("B"), "ga1-gb1"),
            link_id("B", Some("A"), "ga1-gb1")
        );
        assert_ne!(link_id("A", None, "a1-a2"), link_id("B", None, "a1-a2"));
        assert_ne!(app_id("A", "s1", "s2"), app_id("A", "s2", "s1"));
        assert!(interface_id(&link_id("A", None, "a1-a2")) < 1 << 31);
    }
}
