//! The quantum layer manager (QLM): reads every KM's QKD links over NETCONF (`<get>` of
//! `etsi-qkd-node:qkd_node`) into the quantum layer's performance report: per link end
//! up/down, secret key rate and the key blocks the end may allocate.

use std::net::SocketAddr;

use futures::future::join_all;

use super::mxi::messages::{LinkPerformance, QuantumLayerReport};
use crate::control::topology::AgentView;
use crate::netconf::client::ClientOptions;
use crate::netconf::pool::Pool;

use crate::model::etsi_node::GET_NODE;

/// The QLM of one domain.
pub struct Qlm {
    agents: Vec<(String, SocketAddr)>,
    pool: Pool,
}

impl Qlm {
    /// A QLM of `agents` (node, NETCONF address), logging in with `options`.
    pub fn new(agents: Vec<(String, SocketAddr)>, options: ClientOptions) -> Self {
        Self {
            agents,
            pool: Pool::new(options),
        }
    }

    /// Reads every agent (concurrently); agents that cannot be read are listed as such.
    pub async fn collect(&self) -> QuantumLayerReport {
        let reads = join_all(self.agents.iter().map(|(_, addr)| self.read(*addr))).await;
        let mut report = QuantumLayerReport::default();
        for ((node, _), read) in self.agents.iter().zip(reads) {
            match read {
                Ok(view) => report.links.extend(link_performance(node, &view)),
                Err(error) => {
                    tracing::debug!(%node, %error, "QLM cannot read the agent");
                    report.unreachable_agents.push(node.clone());
                }
            }
        }
        report
    }

    async fn read(&self, addr: SocketAddr) -> Result<AgentView, String> {
        let reply = self
            .pool
            .rpc(addr, GET_NODE)
            .await
            .map_err(|e| e.to_string())?;
        AgentView::parse(strip_data(&reply))
    }
}

/// The content of a `<data>` reply.
fn strip_data(reply: &str) -> &str {
    let reply = reply.trim();
    reply
        .strip_prefix("<data>")
        .and_then(|r| r.strip_suffix("</data>"))
        .unwrap_or(reply)
}

/// The link ends of one agent's view (`node` is the configured node id).
pub fn link_performance(node: &str, view: &AgentView) -> Vec<LinkPerformance> {
    view.links
        .iter()
        .map(|l| LinkPerformance {
            link_id: l.id.clone(),
            node: node.to_owned(),
            peer: l.peer.clone(),
            up: l.up,
            secret_key_rate_bps: l.rate_bps,
            own_blocks: l.own_blocks,
            capacity_blocks: l.capacity_blocks,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_data_becomes_link_performance() {
        let reply = r#"<data><qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_id>ga1</qkdn_id><qkd_links><qkd_link><qkdl_id>ga1-gb1</qkdl_id><peer-node xmlns="urn:qkdni:yang:qkdni-km">gb1</peer-node><oper-state xmlns="urn:qkdni:yang:qkdni-km">down</oper-state><secret-key-rate-bps xmlns="urn:qkdni:yang:qkdni-km">250.5</secret-key-rate-bps><key-pool xmlns="urn:qkdni:yang:qkdni-km"><own-blocks>7</own-blocks><capacity-blocks>64</capacity-blocks></key-pool></qkd_link></qkd_links></qkd_node></data>"#;
        let view = AgentView::parse(strip_data(reply)).unwrap();
        let links = link_performance("ga1", &view);
        assert_eq!(
            links,
            vec![LinkPerformance {
                link_id: "ga1-gb1".into(),
                node: "ga1".into(),
                peer: "gb1".into(),
                up: false,
                secret_key_rate_bps: 250.5,
                own_blocks: 7,
                capacity_blocks: 64,
            }]
        );
    }

    #[tokio::test]
    async fn unreachable_agents_are_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let qlm = Qlm::new(
            vec![("a1".into(), addr)],
            ClientOptions {
                connect_timeout: std::time::Duration::from_secs(2),
                ..ClientOptions::password(
                    "operator",
                    "x",
                    crate::netconf::client::HostKeyCheck::AcceptAny,
                )
            },
        );
        let report = qlm.collect().await;
        assert!(report.links.is_empty());
        assert_eq!(report.unreachable_agents, vec!["a1".to_string()]);
    }
}
