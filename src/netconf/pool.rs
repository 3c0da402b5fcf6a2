//! One NETCONF session per agent, reused across operations (the controller's southbound):
//! a session that the agent closed is replaced on the next use.
//!
//! Connections are established per agent: a connect holds only that agent's gate, never a
//! pool-wide lock, so an agent that does not answer (stopped, black-holed: the connect waits
//! for [`ClientOptions::connect_timeout`]) delays nobody's operations on other agents. Callers
//! for the same agent wait for one connect instead of opening several sessions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::client::{ClientError, ClientOptions, NetconfClient};

/// Sessions by agent address.
pub struct Pool {
    options: ClientOptions,
    /// Open sessions; the lock is never held across an await.
    sessions: Mutex<HashMap<SocketAddr, Arc<NetconfClient>>>,
    /// One connect at a time per agent.
    gates: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

impl Pool {
    /// A pool connecting with `options`.
    pub fn new(options: ClientOptions) -> Self {
        Self {
            options,
            sessions: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// The options sessions are opened with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The pooled session to `addr` if it is open.
    fn open(&self, addr: SocketAddr) -> Option<Arc<NetconfClient>> {
        let sessions = self.sessions.lock().expect("sessions");
        sessions.get(&addr).filter(|s| !s.is_closed()).cloned()
    }

    fn gate(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<()>> {
        self.gates
            .lock()
            .expect("gates")
            .entry(addr)
            .or_default()
            .clone()
    }

    /// The open session to `addr`, connecting if there is none.
    pub async fn session(&self, addr: SocketAddr) -> Result<Arc<NetconfClient>, ClientError> {
        if let Some(session) = self.open(addr) {
            return Ok(session);
        }
        let gate = self.gate(addr);
        let _connecting = gate.lock().await;
        // another caller may have connected while this one waited at the gate
        if let Some(session) = self.open(addr) {
            return Ok(session);
        }
        let session = NetconfClient::connect(addr, self.options.clone()).await?;
        self.sessions
            .lock()
            .expect("sessions")
            .insert(addr, session.clone());
        Ok(session)
    }

    /// Runs `operation` on the session to `addr`; if that session turns out closed, drops
    /// it and runs the operation once more on a new one.
    pub async fn rpc(&self, addr: SocketAddr, operation: &str) -> Result<String, ClientError> {
        let session = self.session(addr).await?;
        match session.rpc(operation).await {
            Err(ClientError::Closed) => {
                self.forget(addr, &session).await;
                self.session(addr).await?.rpc(operation).await
            }
            other => other,
        }
    }

    /// Forgets `session` for `addr` (if it is still the pooled one).
    pub async fn forget(&self, addr: SocketAddr, session: &Arc<NetconfClient>) {
        let mut sessions = self.sessions.lock().expect("sessions");
        if sessions.get(&addr).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(&addr);
        }
    }

    /// Number of pooled sessions.
    pub async fn len(&self) -> usize {
        self.sessions.lock().expect("sessions").len()
    }

    /// Whether no session is pooled.
    pub async fn is_empty(&self) -> bool {
        self.sessions.lock().expect("sessions").is_empty()
    }
}
