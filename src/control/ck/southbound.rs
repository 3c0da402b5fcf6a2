//! The controller's southbound: reading agents and installing relay routes over NETCONF.
//!
//! A route change touching several KMs is installed on all of them or on none:
//! 1. prepare: on every KM, lock running and the candidate (RFC 6241 appendix E: an operator's
//!    direct edit of running cannot slip in and be overwritten by the commit), write the
//!    change to the candidate and validate it;
//! 2. commit: a confirmed commit on every KM (each rolls back by itself unless confirmed,
//!    also if it crashes or loses the controller's session);
//! 3. confirm: a confirming commit on every KM.
//!
//! A failure in 1 or 2 discards or cancels the change everywhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use futures::future::join_all;

use crate::control::topology::{AgentView, ForeignSae, WeightedHop};

use crate::control::config::SouthboundLogin;
use crate::netconf::client::{ClientError, ClientOptions, NetconfClient};
use crate::netconf::pool::Pool;

/// Seconds a KM keeps an unconfirmed route change before rolling it back.
pub const CONFIRM_TIMEOUT_S: u64 = 30;

/// Changes on one KM: relay routes by destination, set (`Some(next hops)`, primary first)
/// or removed (`None`), and entries of other QKDNs' SAEs, set or removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteChanges {
    pub routes: BTreeMap<String, Option<Vec<WeightedHop>>>,
    pub foreign_saes: BTreeMap<String, Option<ForeignSae>>,
}

impl RouteChanges {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.foreign_saes.is_empty()
    }
}

/// Southbound errors.
#[derive(Debug, thiserror::Error)]
pub enum SouthboundError {
    #[error("unknown agent {0}")]
    UnknownAgent(String),
    #[error("agent {node}: {error}")]
    Agent { node: String, error: ClientError },
    #[error("agent {node}: unreadable data: {reason}")]
    Data { node: String, reason: String },
    #[error("southbound: {0}")]
    HostKeys(#[from] crate::netconf::known_hosts::HostKeyError),
}

/// NETCONF sessions to every agent of the domain.
pub struct Southbound {
    pool: Pool,
    agents: BTreeMap<String, SocketAddr>,
}

impl Southbound {
    /// A southbound to `agents` (node -> NETCONF address) with `login`: the agents' host
    /// keys are checked against `login.known_hosts` (which must exist and parse).
    pub fn with_login(
        agents: BTreeMap<String, SocketAddr>,
        login: &SouthboundLogin,
    ) -> Result<Self, SouthboundError> {
        let options = login.client_options(Duration::from_secs(10))?;
        Ok(Self {
            pool: Pool::new(options),
            agents,
        })
    }

    /// The agents' node ids.
    pub fn nodes(&self) -> impl Iterator<Item = &String> {
        self.agents.keys()
    }

    fn addr(&self, node: &str) -> Result<SocketAddr, SouthboundError> {
        self.agents
            .get(node)
            .copied()
            .ok_or_else(|| SouthboundError::UnknownAgent(node.to_owned()))
    }

    async fn rpc(&self, node: &str, operation: &str) -> Result<String, SouthboundError> {
        self.pool
            .rpc(self.addr(node)?, operation)
            .await
            .map_err(|error| SouthboundError::Agent {
                node: node.to_owned(),
                error,
            })
    }

    /// Reads an agent's configuration and state.
    pub async fn read(&self, node: &str) -> Result<AgentView, SouthboundError> {
        let reply = self.rpc(node, crate::model::etsi_node::GET_NODE).await?;
        let data = reply
            .trim()
            .strip_prefix("<data>")
            .and_then(|r| r.strip_suffix("</data>"))
            .unwrap_or(&reply);
        AgentView::parse(data).map_err(|reason| SouthboundError::Data {
            node: node.to_owned(),
            reason,
        })
    }

    /// Enables or pauses key generation on link `link_id` (its `qkdl_id`) at agent `node`:
    /// `qkdl_enable` in the running datastore, the standard's switch of a QKD link.
    pub async fn set_generation(
        &self,
        node: &str,
        link_id: &uuid::Uuid,
        enabled: bool,
    ) -> Result<(), SouthboundError> {
        let config = crate::model::etsi_node::enable_config(link_id, enabled);
        let edit = format!(
            "<edit-config><target><running/></target><config>{config}</config></edit-config>"
        );
        self.rpc(node, &edit).await.map(|_| ())
    }

    /// Where and how to follow an agent's notifications (a session of their own).
    pub fn notification_source(&self, node: &str) -> Option<(SocketAddr, ClientOptions)> {
        Some((*self.agents.get(node)?, self.pool.options().clone()))
    }

    /// Installs route changes on every KM named, all or none. Each KM is driven through one
    /// session for the whole transaction (its candidate lock and its confirmed commit belong
    /// to that session), never retried on another.
    pub async fn install(
        &self,
        changes: &BTreeMap<String, RouteChanges>,
    ) -> Result<(), SouthboundError> {
        let nodes: Vec<&String> = changes.keys().collect();
        let mut sessions = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let session = self.pool.session(self.addr(node)?).await.map_err(|error| {
                SouthboundError::Agent {
                    node: node.to_string(),
                    error,
                }
            })?;
            sessions.push(session);
        }
        let steps: Vec<(&String, &Arc<NetconfClient>)> =
            nodes.iter().copied().zip(sessions.iter()).collect();
        // 1. prepare
        let prepared = join_all(
            steps
                .iter()
                .map(|(node, s)| self.prepare(node, s, &changes[*node])),
        )
        .await;
        if let Some(error) = prepared.into_iter().find_map(Result::err) {
            // nothing is committed anywhere yet: drop every candidate change
            join_all(steps.iter().map(|(node, s)| self.release(node, s))).await;
            return Err(error);
        }
        // 2. confirmed commit everywhere
        let commit = format!(
            "<commit><confirmed/><confirm-timeout>{CONFIRM_TIMEOUT_S}</confirm-timeout></commit>"
        );
        let committed = join_all(steps.iter().map(|(node, s)| self.call(node, s, &commit))).await;
        if committed.iter().any(Result::is_err) {
            // cancel only our own confirmed commits, where they happened
            join_all(
                steps
                    .iter()
                    .zip(&committed)
                    .map(|((node, s), result)| async move {
                        if result.is_ok() {
                            let _ = self.call(node, s, "<cancel-commit/>").await;
                        }
                        self.release(node, s).await;
                    }),
            )
            .await;
            return Err(committed
                .into_iter()
                .find_map(Result::err)
                .expect("a failed commit"));
        }
        // 3. confirm
        let confirmed = join_all(steps.iter().map(|(node, s)| async move {
            let result = self.call(node, s, "<commit/>").await;
            match result {
                // committed: the candidate holds no change of ours, only the locks remain
                Ok(_) => self.unlock(node, s).await,
                Err(_) => self.release(node, s).await,
            }
            result
        }))
        .await;
        for (node, result) in nodes.iter().zip(confirmed) {
            if let Err(error) = result {
                tracing::error!(%node, %error, "confirming commit failed: the KM rolls back and is reconciled later");
            }
        }
        Ok(())
    }

    /// One RPC on a given session; a closed session leaves the pool.
    async fn call(
        &self,
        node: &str,
        session: &Arc<NetconfClient>,
        operation: &str,
    ) -> Result<String, SouthboundError> {
        match session.rpc(operation).await {
            Ok(reply) => Ok(reply),
            Err(error) => {
                if matches!(error, ClientError::Closed) {
                    if let Ok(addr) = self.addr(node) {
                        self.pool.forget(addr, session).await;
                    }
                }
                Err(SouthboundError::Agent {
                    node: node.to_owned(),
                    error,
                })
            }
        }
    }

    async fn prepare(
        &self,
        node: &str,
        session: &Arc<NetconfClient>,
        changes: &RouteChanges,
    ) -> Result<(), SouthboundError> {
        self.call(node, session, "<lock><target><running/></target></lock>")
            .await?;
        self.call(node, session, "<discard-changes/>").await?;
        self.call(node, session, "<lock><target><candidate/></target></lock>")
            .await?;
        let edit = crate::model::km_edit::relay_edit(&changes.routes, &changes.foreign_saes);
        self.call(node, session, &edit).await?;
        self.call(
            node,
            session,
            "<validate><source><candidate/></source></validate>",
        )
        .await?;
        Ok(())
    }

    /// Drops the candidate change and the locks (errors ignored: best effort clean-up).
    async fn release(&self, node: &str, session: &Arc<NetconfClient>) {
        let _ = self.call(node, session, "<discard-changes/>").await;
        self.unlock(node, session).await;
    }

    /// Releases both locks, the two requests in flight together on the session (the agent
    /// answers them in order; errors ignored: best effort).
    async fn unlock(&self, node: &str, session: &Arc<NetconfClient>) {
        let unlock = |target: &str| format!("<unlock><target><{target}/></target></unlock>");
        let (candidate, running) = (unlock("candidate"), unlock("running"));
        let _ = futures::future::join(
            self.call(node, session, &candidate),
            self.call(node, session, &running),
        )
        .await;
    }
}
