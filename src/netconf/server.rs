//! The NETCONF SSH server: host key, users (password or public key) in access groups, the
//! shared datastores and the application behind them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use russh::keys::ssh_key::PublicKey;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use yang2::data::DataTree;

use super::datastore::{self, Datastore};
use super::error::RpcError;

/// Access group of a NETCONF user (a minimal RFC 8341 model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// May read and write everything.
    Admin,
    /// May read; every operation that changes a datastore, a lock or a session is denied.
    ReadOnly,
}

/// One NETCONF user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Password, if password authentication is allowed for this user.
    #[serde(default)]
    pub password: Option<String>,
    /// OpenSSH public keys (`ssh-ed25519 AAAA... comment`) allowed for this user.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    pub group: Group,
}

/// Configuration of a NETCONF server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetconfConfig {
    /// SSH listen address.
    pub listen: SocketAddr,
    /// OpenSSH private host key; an Ed25519 key is generated there when missing.
    pub host_key: PathBuf,
    pub users: Vec<User>,
    /// Largest accepted message in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Where the running datastore is persisted (XML); none: in memory only.
    #[serde(default)]
    pub running_file: Option<PathBuf>,
    /// Connection, session and login limits.
    #[serde(default)]
    pub limits: NetconfLimits,
}

fn default_max_message() -> usize {
    4 * 1024 * 1024
}

/// Limits of a NETCONF server: what idle, unauthenticated or guessing clients can hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetconfLimits {
    /// Caps on SSH connections that have not yet started a NETCONF session (in total and per
    /// source address); sessions are capped by `max_sessions`.
    pub connections: crate::conn_limit::ConnectionLimits,
    /// Time a client has from connecting to a running NETCONF session (SSH handshake,
    /// authentication, subsystem request).
    pub login_timeout_ms: u64,
    /// A session that sends no RPC for this long is closed (sessions subscribed to
    /// notifications excepted).
    pub idle_timeout_ms: u64,
    /// Most NETCONF sessions at once.
    pub max_sessions: usize,
    /// Most NETCONF sessions of one user at once.
    pub max_sessions_per_user: usize,
    /// Bytes of incoming messages all sessions together may hold before the messages are
    /// complete (each within `max_message_bytes`): a session that would go beyond gets a
    /// `resource-denied` error and is closed.
    pub max_buffered_bytes: usize,
    /// Slowing down of password guessing.
    pub auth_throttle: super::throttle::ThrottleConfig,
}

impl Default for NetconfLimits {
    fn default() -> Self {
        Self {
            connections: crate::conn_limit::ConnectionLimits::new(64, 16),
            login_timeout_ms: 10_000,
            idle_timeout_ms: 3_600_000,
            max_sessions: 32,
            max_sessions_per_user: 16,
            max_buffered_bytes: 64 * 1024 * 1024,
            auth_throttle: Default::default(),
        }
    }
}

impl NetconfLimits {
    /// Why these limits cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let c = &self.connections;
        if c.max_connections == 0 || c.max_per_source == 0 {
            return Err("netconf.limits.connections caps must be positive".into());
        }
        if self.login_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err("netconf.limits timeouts must be positive".into());
        }
        if self.max_sessions == 0 || self.max_sessions_per_user == 0 {
            return Err("netconf.limits.max_sessions(_per_user) must be positive".into());
        }
        if self.max_buffered_bytes == 0 {
            return Err("netconf.limits.max_buffered_bytes must be positive".into());
        }
        Ok(())
    }
}

/// A security-relevant event of a NETCONF server, handed to its [`Application`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    /// A login failed.
    AuthFailure {
        /// The user name the client gave (at most 64 characters of it).
        user: String,
        /// The client's address.
        source: std::net::IpAddr,
        /// `password` or `publickey`.
        method: &'static str,
        /// Failed logins from this source within the throttle window.
        failures_from_source: u32,
        /// Failed logins for this user name within the throttle window.
        failures_for_user: u32,
        /// The delay now imposed on the next attempts from this source, milliseconds.
        delay_ms: u64,
    },
}

/// A notification ready to send: its event time and XML content.
#[derive(Debug, Clone)]
pub struct Notification {
    /// RFC 3339 time of the event.
    pub event_time: String,
    /// The notification's content element(s), XML.
    pub xml: String,
    /// Namespace and name of the top element, for filtering.
    pub kind: (String, String),
}

impl Notification {
    /// A YANG notification `module:name` of namespace `namespace` with top-level `leaves`
    /// (name, canonical value), validated against the loaded modules.
    pub fn from_leaves(
        module: &str,
        namespace: &str,
        name: &str,
        leaves: &[(&str, String)],
        event_time: String,
    ) -> Result<Self, yang2::Error> {
        use yang2::data::{Data, DataFormat, DataPrinterFlags};
        let mut tree = crate::yang::empty();
        for (leaf, value) in leaves {
            tree.new_path(&format!("/{module}:{name}/{leaf}"), Some(value), false)?;
        }
        let xml = tree
            .print_string(
                DataFormat::XML,
                DataPrinterFlags::WITH_SIBLINGS | DataPrinterFlags::SHRINK,
            )?
            .unwrap_or_default();
        Ok(Self {
            event_time,
            xml,
            kind: (namespace.to_owned(), name.to_owned()),
        })
    }
}

/// What a daemon puts behind its NETCONF server.
pub trait Application: Send + Sync + 'static {
    /// The configuration the daemon starts with when nothing is persisted (XML).
    fn initial_config(&self) -> String;
    /// Checks a new, schema-valid running configuration against the daemon's rules and
    /// puts it into effect; an error leaves the daemon (and the datastore) unchanged.
    fn apply(&self, old: &DataTree<'static>, new: &DataTree<'static>) -> Result<(), RpcError>;
    /// The daemon's operational state (config false nodes, with list keys).
    fn state(&self) -> Result<DataTree<'static>, RpcError>;
    /// The daemon's notifications.
    fn notifications(&self) -> broadcast::Receiver<Notification>;
    /// Hears a security event (failed logins); the server has logged it already.
    fn security_event(&self, event: SecurityEvent) {
        let _ = event;
    }
    /// The daemon's audit log, where every change of the running datastore is recorded
    /// with its user and diff (none: not recorded).
    fn audit(&self) -> Option<&crate::audit::AuditLog> {
        None
    }
}

tokio::task_local! {
    /// The user of the session whose operation is being handled.
    static CURRENT_USER: String;
}

/// The NETCONF user whose operation is being handled, for an [`Application`] that records
/// who changed its configuration (inside [`Application::apply`]); `None` outside an
/// operation (at start, a confirmed commit rolled back on its timeout).
pub fn current_user() -> Option<String> {
    CURRENT_USER.try_with(String::clone).ok()
}

/// Runs `operation` as `user`'s (see [`current_user`]).
pub(crate) async fn as_user<F: std::future::Future>(user: String, operation: F) -> F::Output {
    CURRENT_USER.scope(user, operation).await
}

/// A pending confirmed commit.
pub(crate) struct Confirmed {
    pub rollback: DataTree<'static>,
    pub session: u32,
    pub persist: Option<String>,
    pub generation: u64,
}

/// The datastores and their locks.
pub(crate) struct Stores {
    pub running: DataTree<'static>,
    pub candidate: DataTree<'static>,
    pub candidate_modified: bool,
    pub locks: HashMap<Datastore, u32>,
    pub confirmed: Option<Confirmed>,
    pub generation: u64,
}

/// A running NETCONF server's shared state.
pub struct NetconfServer {
    pub(crate) config: NetconfConfig,
    pub(crate) app: Arc<dyn Application>,
    pub(crate) stores: Mutex<Stores>,
    pub(crate) sessions: Mutex<HashMap<u32, SessionInfo>>,
    next_session: AtomicU32,
    /// Failed logins, to slow down guessing.
    pub(crate) throttle: super::throttle::AuthThrottle,
    /// What the sessions hold of incoming messages, together.
    pub(crate) buffered: Arc<super::framing::BufferBudget>,
}

/// What the server knows of a session.
pub(crate) struct SessionInfo {
    pub user: String,
    pub kill: watch::Sender<bool>,
    pub started: String,
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("host key {path}: {reason}")]
    HostKey { path: PathBuf, reason: String },
    #[error("user {user}: bad authorized key: {reason}")]
    UserKey { user: String, reason: String },
    #[error("persisted running datastore {path}: {error}")]
    Running { path: PathBuf, error: Box<RpcError> },
    #[error("initial configuration rejected: {0}")]
    Initial(Box<RpcError>),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl NetconfServer {
    /// Loads (or creates) the running datastore and applies it to the application.
    pub fn new(config: NetconfConfig, app: Arc<dyn Application>) -> Result<Arc<Self>, ServerError> {
        for user in &config.users {
            for key in &user.authorized_keys {
                PublicKey::from_openssh(key).map_err(|e| ServerError::UserKey {
                    user: user.name.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        // A rollback point left by an unconfirmed commit wins over the running file
        // (RFC 6241 section 8.4.1: a reboot before confirmation restores the configuration).
        let rollback = config
            .running_file
            .as_ref()
            .map(|p| rollback_path(p))
            .filter(|p| p.exists());
        if let Some(path) = &rollback {
            tracing::warn!(path = %path.display(), "restoring the configuration of an unconfirmed commit");
        }
        let persisted = rollback
            .or_else(|| config.running_file.clone().filter(|p| p.exists()))
            .map(|p| {
                let text = std::fs::read_to_string(&p).map_err(|e| ServerError::Running {
                    path: p.clone(),
                    error: Box::new(RpcError::application(
                        super::ErrorTag::OperationFailed,
                        e.to_string(),
                    )),
                })?;
                Ok::<_, ServerError>((p, text))
            })
            .transpose()?;
        let (xml, source) = match persisted {
            Some((path, xml)) => (xml, Some(path)),
            None => (app.initial_config(), None),
        };
        let load = |xml: &str| -> Result<DataTree<'static>, RpcError> {
            let mut tree = datastore::parse_config(xml)?;
            datastore::validate(&mut tree)?;
            Ok(tree)
        };
        let running = load(&xml).map_err(|error| match &source {
            Some(path) => ServerError::Running {
                path: path.clone(),
                error: Box::new(error),
            },
            None => ServerError::Initial(Box::new(error)),
        })?;
        app.apply(&crate::yang::empty(), &running)
            .map_err(|e| ServerError::Initial(Box::new(e)))?;
        let candidate =
            datastore::duplicate(&running).map_err(|e| ServerError::Initial(Box::new(e)))?;
        let server = Arc::new(Self {
            app,
            stores: Mutex::new(Stores {
                running,
                candidate,
                candidate_modified: false,
                locks: HashMap::new(),
                confirmed: None,
                generation: 0,
            }),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU32::new(1),
            throttle: super::throttle::AuthThrottle::new(config.limits.auth_throttle.clone()),
            buffered: super::framing::BufferBudget::new(config.limits.max_buffered_bytes),
            config,
        });
        if server.persist(&server.stores.lock().expect("stores").running) {
            server.clear_rollback_point();
        }
        Ok(server)
    }

    /// Durably records the configuration to restore if a confirmed commit is never
    /// confirmed, also across a crash.
    pub(crate) fn save_rollback_point(&self, tree: &DataTree<'static>) -> Result<(), RpcError> {
        let Some(path) = self.config.running_file.as_ref().map(|p| rollback_path(p)) else {
            return Ok(());
        };
        write_durably(&path, &datastore::to_xml(tree)?).map_err(|e| {
            RpcError::application(
                super::ErrorTag::OperationFailed,
                format!("cannot save the rollback point: {e}"),
            )
        })
    }

    /// Forgets the rollback point (the confirmed commit was confirmed or rolled back).
    pub(crate) fn clear_rollback_point(&self) {
        if let Some(path) = self.config.running_file.as_ref().map(|p| rollback_path(p)) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The address the server listens on.
    pub fn listen(&self) -> SocketAddr {
        self.config.listen
    }

    /// Writes the running datastore to its file (atomically), if configured; false when it
    /// could not be written (logged).
    pub(crate) fn persist(&self, running: &DataTree<'static>) -> bool {
        let Some(path) = &self.config.running_file else {
            return true;
        };
        let result = datastore::to_xml(running)
            .map_err(|e| e.to_string())
            .and_then(|xml| write_durably(path, &xml).map_err(|e| e.to_string()));
        if let Err(error) = &result {
            tracing::error!(path = %path.display(), %error, "cannot persist the running datastore");
        }
        result.is_ok()
    }

    /// The access group of `user`.
    pub(crate) fn group(&self, user: &str) -> Group {
        self.config
            .users
            .iter()
            .find(|u| u.name == user)
            .map(|u| u.group)
            .unwrap_or(Group::ReadOnly)
    }

    /// Registers a new session of `user`, unless the session caps are reached.
    pub(crate) fn register_session(
        &self,
        user: &str,
    ) -> Result<(u32, watch::Receiver<bool>), &'static str> {
        let limits = &self.config.limits;
        let mut sessions = self.sessions.lock().expect("sessions");
        if sessions.len() >= limits.max_sessions {
            return Err("the server holds its maximum number of sessions");
        }
        if sessions.values().filter(|s| s.user == user).count() >= limits.max_sessions_per_user {
            return Err("the user holds its maximum number of sessions");
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (kill, killed) = watch::channel(false);
        sessions.insert(
            id,
            SessionInfo {
                user: user.to_owned(),
                kill,
                started: now_rfc3339(),
            },
        );
        Ok((id, killed))
    }

    /// Forgets a session: releases its locks and rolls back its unconfirmed commit.
    pub(crate) fn end_session(self: &Arc<Self>, id: u32) {
        self.sessions.lock().expect("sessions").remove(&id);
        let mut stores = self.stores.lock().expect("stores");
        stores.locks.retain(|_, owner| *owner != id);
        let unconfirmed = stores
            .confirmed
            .as_ref()
            .is_some_and(|c| c.session == id && c.persist.is_none());
        if unconfirmed {
            tracing::info!(
                session = id,
                "session ended before confirming its commit: rolling back"
            );
            rollback_confirmed(self, &mut stores);
        }
    }
}

/// Restores the running datastore saved by a pending confirmed commit.
pub(crate) fn rollback_confirmed(server: &NetconfServer, stores: &mut Stores) {
    let Some(pending) = stores.confirmed.take() else {
        return;
    };
    if let Err(error) = server.app.apply(&stores.running, &pending.rollback) {
        tracing::error!(%error, "the application refused the rollback configuration");
    } else if let Some(audit) = server.app.audit() {
        crate::audit::hooks::netconf_edit(
            audit,
            crate::audit::SYSTEM,
            Some(pending.session),
            "confirmed-commit-rollback",
            &stores.running,
            &pending.rollback,
        );
    }
    if server.persist(&pending.rollback) {
        server.clear_rollback_point();
    }
    match datastore::duplicate(&pending.rollback) {
        Ok(copy) => {
            stores.candidate = copy;
            stores.candidate_modified = false;
        }
        Err(error) => tracing::error!(%error, "cannot copy the rollback configuration"),
    }
    stores.running = pending.rollback;
    tracing::info!("running configuration rolled back");
}

/// Where the rollback point of a confirmed commit is kept, beside the running file.
fn rollback_path(running: &std::path::Path) -> PathBuf {
    running.with_extension("rollback.xml")
}

/// Writes `text` to `path` atomically (temporary file, fsync, rename).
fn write_durably(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The current time in RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Unix time `ms` (milliseconds) in RFC 3339.
pub fn rfc3339_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(now_rfc3339)
}
