//! One NETCONF session per agent, reused across operations (the controller's southbound):
//! a session that the agent closed is replaced on the next use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::client::{ClientError, ClientOptions, NetconfClient};

/// Sessions by agent address.
pub struct Pool {
    options: ClientOptions,
    sessions: Mutex<HashMap<SocketAddr, Arc<NetconfClient>>>,
}

impl Pool {
    /// A pool connecting with `options`.
    pub fn new(options: ClientOptions) -> Self {
        Self {
            options,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The options sessions are opened with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The open session to `addr`, connecting if there is none.
    pub async fn session(&self, addr: SocketAddr) -> Result<Arc<NetconfClient>, ClientError> {
        let mut sessions = self.sessions.lock().await;
        if let Some(session) = sessions.get(&addr).filter(|s| !s.is_closed()) {
            return Ok(session.clone());
        }
        let session = NetconfClient::connect(addr, self.options.clone()).await?;
        sessions.insert(addr, session.clone());
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
        let mut sessions = self.sessions.lock().await;
        if sessions.get(&addr).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(&addr);
        }
    }

    /// Number of pooled sessions.
    pub async fn len(&self) -> usize {
        self.sessions.lock().await.len()
    }

    /// Whether no session is pooled.
    pub async fn is_empty(&self) -> bool {
        self.sessions.lock().await.is_empty()
    }
}
