//! Provisioning the domain's controller: the manager writes the interworking configuration
//! operators set on it into the controller's `qkdni-controller` `interworking` subtree
//! over NETCONF (one `edit-config` replacing the subtree: the controller checks it whole
//! and applies it at once or refuses it), and reads the controller's configuration at its
//! first start.

use std::net::SocketAddr;
use std::time::Duration;

use super::configuration::PeerDomain;
use crate::management::config::ControllerNetconf;
use crate::model::controller::{self as cmodel, interworking as ciw, peer as cpeer};
use crate::netconf::client::{text, ClientError, ClientOptions, HostKeyCheck};
use crate::netconf::pool::Pool;
use crate::netconf::{ErrorTag, RpcError};

/// The NETCONF base namespace (the `operation` attribute).
const NS_BASE: &str = "urn:ietf:params:xml:ns:netconf:base:1.0";

/// The manager's NETCONF client of its controller.
pub struct Provisioner {
    address: SocketAddr,
    pool: Pool,
}

/// Why a push or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("the controller at {address} refused the configuration: {reason}")]
    Refused { address: SocketAddr, reason: String },
    #[error("the controller at {address} cannot be reached: {reason}")]
    Unreachable { address: SocketAddr, reason: String },
    #[error("the controller's configuration is malformed: {0}")]
    Malformed(String),
}

impl ProvisionError {
    /// The error for the operator's commit.
    pub fn to_rpc_error(&self) -> RpcError {
        let tag = match self {
            ProvisionError::Refused { .. } => ErrorTag::OperationFailed,
            _ => ErrorTag::ResourceDenied,
        };
        RpcError::application(
            tag,
            format!("{self}; nothing changed on the manager or the controller"),
        )
        .path(crate::model::manager::ROOT.to_owned() + "/interworking")
    }
}

impl Provisioner {
    /// A client of the controller with `login` (its host key checked against the known
    /// hosts file).
    pub fn new(login: &ControllerNetconf) -> Self {
        let mut options = ClientOptions::password(
            &login.username,
            &login.password,
            HostKeyCheck::KnownHosts(login.known_hosts.clone()),
        );
        options.timeout = Duration::from_secs(10);
        Self {
            address: login.address,
            pool: Pool::new(options),
        }
    }

    /// The controller's NETCONF address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn error(&self, error: ClientError) -> ProvisionError {
        match error {
            ClientError::Rpc(errors) => ProvisionError::Refused {
                address: self.address,
                reason: errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            other => ProvisionError::Unreachable {
                address: self.address,
                reason: other.to_string(),
            },
        }
    }

    /// Writes `peers` as the controller's interworking configuration, naming `operator`
    /// and the manager's change `change` as who asked for it.
    pub async fn push(
        &self,
        peers: &[PeerDomain],
        operator: &str,
        change: u64,
    ) -> Result<(), ProvisionError> {
        let edit = edit_config(peers, operator, change);
        let operation = format!(
            "<edit-config><target><running/></target><config>{edit}</config></edit-config>"
        );
        self.pool
            .rpc(self.address, &operation)
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// The controller's interworking configuration, as the manager's peer domains.
    pub async fn read(&self) -> Result<Vec<PeerDomain>, ProvisionError> {
        let filter = format!(
            "<controller xmlns=\"{}\"><interworking/></controller>",
            cmodel::NAMESPACE
        );
        let operation = format!(
            "<get-config><source><running/></source><filter type=\"subtree\">{filter}</filter></get-config>"
        );
        let reply = self
            .pool
            .rpc(self.address, &operation)
            .await
            .map_err(|e| self.error(e))?;
        peers_of(&reply)
    }
}

/// The `<config>` content that makes `peers` the controller's interworking configuration.
pub fn edit_config(peers: &[PeerDomain], operator: &str, change: u64) -> String {
    let flag = |b: bool| if b { "true" } else { "false" };
    let mut xml = format!(
        "<controller xmlns=\"{}\" xmlns:nc=\"{NS_BASE}\"><interworking nc:operation=\"replace\">",
        cmodel::NAMESPACE
    );
    for p in peers {
        xml.push_str(&format!(
            "<peer><domain>{}</domain><url>{}</url><controller>{}</controller>\
             <expose><saes>{}</saes><key-rate>{}</key-rate></expose>",
            text(&p.name),
            text(&p.cxi_url),
            text(&p.controller),
            flag(p.expose_saes),
            flag(p.expose_key_rate),
        ));
        for class in &p.qos_classes {
            xml.push_str(&format!("<qos-class>{}</qos-class>", text(class)));
        }
        xml.push_str("</peer>");
    }
    xml.push_str(&format!(
        "<provisioned-by><operator>{}</operator><change>{change}</change></provisioned-by>",
        text(operator)
    ));
    xml.push_str("</interworking></controller>");
    xml
}

/// The peers in a `get-config` reply of the controller's interworking subtree (with or
/// without its `data` element; each peer's own exposure, else the domain's).
pub fn peers_of(reply: &str) -> Result<Vec<PeerDomain>, ProvisionError> {
    let wrapped = format!("<data>{reply}</data>");
    let doc = roxmltree::Document::parse(&wrapped)
        .map_err(|e| ProvisionError::Malformed(e.to_string()))?;
    let Some(controller) = doc.descendants().find(|n| {
        n.is_element()
            && n.tag_name().name() == "controller"
            && n.tag_name().namespace() == Some(cmodel::NAMESPACE)
    }) else {
        return Ok(Vec::new());
    };
    let Some(iw) = crate::model::xml_child(controller, "interworking") else {
        return Ok(Vec::new());
    };
    let domain_flag = |path: &str| crate::model::xml_text(iw, path).is_none_or(|v| v == "true");
    let (saes, key_rate) = (
        domain_flag(ciw::EXPOSE_SAES),
        domain_flag(ciw::EXPOSE_KEY_RATE),
    );
    let mut peers = Vec::new();
    for node in iw
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == ciw::PEER)
    {
        let field = |path: &str| crate::model::xml_text(node, path);
        let (Some(name), Some(cxi_url), Some(controller)) = (
            field(cpeer::DOMAIN),
            field(cpeer::URL),
            field(cpeer::CONTROLLER),
        ) else {
            continue;
        };
        peers.push(PeerDomain {
            name,
            cxi_url,
            controller,
            expose_saes: field(cpeer::EXPOSE_SAES).map_or(saes, |v| v == "true"),
            expose_key_rate: field(cpeer::EXPOSE_KEY_RATE).map_or(key_rate, |v| v == "true"),
            qos_classes: node
                .children()
                .filter(|n| n.is_element() && n.tag_name().name() == cpeer::QOS_CLASS)
                .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
                .collect(),
        });
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> PeerDomain {
        PeerDomain {
            name: "B".into(),
            cxi_url: "https://127.0.0.1:7400".into(),
            controller: "controller-B".into(),
            expose_saes: false,
            expose_key_rate: true,
            qos_classes: vec!["gold".into(), "silver".into()],
        }
    }

    /// The edit is valid `qkdni-controller` configuration, and reads back the same.
    #[test]
    fn the_edit_is_controller_configuration_and_reads_back() {
        let edit = edit_config(&[b()], "alice<&>", 7);
        // the operation attribute aside, the content is the controller's configuration
        let plain = edit
            .replace(" nc:operation=\"replace\"", "")
            .replace(&format!(" xmlns:nc=\"{NS_BASE}\""), "");
        let context = crate::yang::full_context().unwrap();
        let buffer = format!("{plain}\0");
        // every element known, every value of its type (not validated whole: this context
        // implements every module, and the ETSI node's is mandatory)
        yang2::data::DataTree::parse_string(
            &context,
            buffer.as_bytes(),
            yang2::data::DataFormat::XML,
            yang2::data::DataParserFlags::STRICT | yang2::data::DataParserFlags::NO_VALIDATION,
            yang2::data::DataValidationFlags::NO_STATE,
        )
        .unwrap();
        assert_eq!(peers_of(&plain).unwrap(), vec![b()]);
        assert!(edit.contains("<operator>alice&lt;&amp;&gt;</operator>"));
    }

    #[test]
    fn the_domain_policy_stands_for_a_peer_without_its_own() {
        let ns = cmodel::NAMESPACE;
        let reply = format!(
            "<controller xmlns=\"{ns}\"><interworking><expose><key-rate>false</key-rate></expose>\
             <peer><domain>C</domain><url>https://c</url><controller>controller-C</controller></peer>\
             </interworking></controller>"
        );
        let peers = peers_of(&reply).unwrap();
        assert_eq!(peers.len(), 1);
        assert!(peers[0].expose_saes && !peers[0].expose_key_rate);
        assert!(peers_of("").unwrap().is_empty());
    }
}
