//! The manager under NETCONF for operators, in the `qkdni-manager` YANG model
//! (configuration management, Y.3818 clause 7):
//!
//! - [`configuration`] — the interworking configuration of the domain (peer domains,
//!   exposure and QoS class names per peer) and the report periods: read, checked, diffed;
//! - [`provision`] — pushing the interworking configuration to the domain's controller
//!   (`qkdni-controller`, NETCONF) and reading it at the first start;
//! - [`state`] — the manager's state: provisioning and the change log.
//!
//! A commit (or an `edit-config` of running) is checked whole by the NETCONF server
//! (schema) and here; when its interworking part changed, it is pushed to the controller
//! first, in one `edit-config` the controller checks whole and applies at once, and only
//! then made running here (report periods in effect at once, running.xml persisted). A push
//! the controller refuses, or a controller that does not answer, fails the commit with an
//! `rpc-error` and changes neither. If the manager then cannot persist its datastore, the
//! server puts the old configuration back, which pushes the old one to the controller too.
//!
//! Every change is recorded with the NETCONF user, the time and the diff: in the change
//! log (`manager/changes`, the last [`CHANGES`]), the event log (`configuration-change`), a
//! `configuration-change` notification, the manager's audit log (the NETCONF server's
//! record of every edit, [`crate::audit`]), and on the controller, which names the
//! manager's login as the user and the operator as who it was done for.

pub mod configuration;
pub mod provision;
pub mod state;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use yang2::data::DataTree;

use self::configuration::Desired;
use self::provision::{ProvisionError, Provisioner};
use super::config::ManagerConfig;
use super::events::Refs;
use super::Manager;
use crate::model::manager::{self as model, configuration_change as cc};
use crate::netconf::server::{Application, NetconfServer, Notification, ServerError};
use crate::netconf::{ErrorTag, RpcError};

/// Event kind of a configuration change.
pub const CONFIGURATION_CHANGE: &str = "configuration-change";
/// Event kind of a push the controller refused or did not answer.
pub const PROVISIONING_FAILED: &str = "provisioning-failed";
/// Event kind of a controller whose interworking configuration was changed other than
/// through the manager, and of its end.
pub const CONFIGURATION_DRIFT: &str = "configuration-drift";
/// How many changes the change log keeps.
pub const CHANGES: usize = 64;
/// How long the manager waits at its first start for the controller's configuration.
const ADOPT_WAIT: Duration = Duration::from_secs(10);

/// One recorded configuration change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Sequence number since the manager started (from 1).
    pub id: u64,
    /// RFC 3339 time.
    pub time: String,
    /// The NETCONF user (`system` for a rollback nobody asked for).
    pub user: String,
    /// Whether it was pushed to the controller.
    pub provisioned: bool,
    /// The changed leaves ([`configuration::diff`]).
    pub diff: Vec<String>,
}

/// How the manager last provisioned its controller.
#[derive(Debug, Clone, Default)]
pub struct Provisioning {
    /// When the controller last accepted a push.
    pub last_push: Option<String>,
    /// Why the last push failed, if it did.
    pub last_error: Option<String>,
    /// What differs while the controller's interworking configuration is not the one
    /// provisioned ([`watch_drift`]).
    pub drift: Option<String>,
}

/// The settings operators change at run time, and the record of their changes.
#[derive(Debug)]
pub struct Settings {
    report_seconds: AtomicU64,
    accounting_summary_seconds: AtomicU64,
    changes: Mutex<VecDeque<Change>>,
    last_id: AtomicU64,
    provisioning: Mutex<Provisioning>,
    /// The interworking configuration the controller is to have (the manager's running
    /// one), `None` until the manager's configuration is in effect.
    peers: Mutex<Option<Vec<configuration::PeerDomain>>>,
    /// Held by every push to the controller and by the drift check (which pushes too), so
    /// that a check never puts back a configuration an operator's commit is replacing.
    pushing: tokio::sync::Mutex<()>,
}

impl Settings {
    /// The settings of the configuration file.
    pub fn new(config: &ManagerConfig) -> Self {
        let summary = crate::model::default_of(&format!(
            "{}/{}",
            model::ROOT,
            model::root::ACCOUNTING_SUMMARY_SECONDS
        ))
        .parse()
        .unwrap_or(3600);
        Self {
            report_seconds: AtomicU64::new(config.report_seconds.max(1)),
            accounting_summary_seconds: AtomicU64::new(summary),
            changes: Mutex::new(VecDeque::new()),
            last_id: AtomicU64::new(0),
            provisioning: Mutex::new(Provisioning::default()),
            peers: Mutex::new(None),
            pushing: tokio::sync::Mutex::new(()),
        }
    }

    /// Seconds between Mxi report packs.
    pub fn report_seconds(&self) -> u64 {
        self.report_seconds.load(Ordering::Relaxed).max(1)
    }

    /// Seconds between accounting (usage) summaries.
    pub fn accounting_summary_seconds(&self) -> u64 {
        self.accounting_summary_seconds
            .load(Ordering::Relaxed)
            .max(1)
    }

    /// The recorded changes, oldest first.
    pub fn changes(&self) -> Vec<Change> {
        self.changes
            .lock()
            .expect("changes")
            .iter()
            .cloned()
            .collect()
    }

    /// How the controller was last provisioned.
    pub fn provisioning(&self) -> Provisioning {
        self.provisioning.lock().expect("provisioning").clone()
    }

    fn record(&self, change: Change) {
        self.last_id.store(change.id, Ordering::Relaxed);
        let mut changes = self.changes.lock().expect("changes");
        if changes.len() == CHANGES {
            changes.pop_front();
        }
        changes.push_back(change);
    }

    fn set(&self, desired: &Desired) {
        *self.peers.lock().expect("peers") = Some(desired.peers.clone());
        self.report_seconds
            .store(desired.mxi_report_seconds.max(1), Ordering::Relaxed);
        self.accounting_summary_seconds
            .store(desired.accounting_summary_seconds.max(1), Ordering::Relaxed);
    }
}

/// The manager behind its operators' NETCONF server.
pub struct Operator {
    manager: Arc<Manager>,
    provisioner: Option<Provisioner>,
    initial: String,
    /// Set once the server runs: the first configuration (persisted or initial) is the
    /// manager's own, not a change to push.
    started: AtomicBool,
    notifications: broadcast::Sender<Notification>,
}

impl Operator {
    /// The first running configuration: the controller's interworking configuration as it
    /// is (when the controller answers within [`ADOPT_WAIT`]) and the file's report period.
    async fn adopt(manager: &Manager, provisioner: Option<&Provisioner>) -> Desired {
        let mut desired = Desired {
            peers: Vec::new(),
            mxi_report_seconds: manager.config.report_seconds.max(1),
            accounting_summary_seconds: manager.configuration.accounting_summary_seconds(),
        };
        let Some(provisioner) = provisioner else {
            return desired;
        };
        let deadline = tokio::time::Instant::now() + ADOPT_WAIT;
        loop {
            match provisioner.read().await {
                Ok(peers) => {
                    manager.events.record(
                        CONFIGURATION_CHANGE,
                        format!(
                            "first start: adopted the controller's interworking configuration ({} peer domain(s))",
                            peers.len()
                        ),
                        Refs::default(),
                    );
                    desired.peers = peers;
                    return desired;
                }
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(%error, "starting without the controller's interworking configuration");
                    manager.events.record(
                        PROVISIONING_FAILED,
                        format!("first start: {error}; no peer domain configured"),
                        Refs::default(),
                    );
                    return desired;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Pushes `desired`'s interworking configuration, waiting for the answer (the NETCONF
    /// server applies configurations synchronously, under its datastore lock).
    fn push(
        &self,
        provisioner: &Provisioner,
        desired: &Desired,
        user: &str,
        id: u64,
    ) -> Result<(), RpcError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            RpcError::application(
                ErrorTag::OperationFailed,
                "no runtime to reach the controller",
            )
        })?;
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return Err(RpcError::application(
                ErrorTag::OperationFailed,
                "the controller can be provisioned only from a multi-threaded runtime",
            ));
        }
        let span =
            tracing::info_span!("provision", controller = %provisioner.address(), change = id);
        let settings = &self.manager.configuration;
        let result: Result<(), ProvisionError> = tokio::task::block_in_place(|| {
            handle.block_on(tracing::Instrument::instrument(
                async {
                    let _pushing = settings.pushing.lock().await;
                    provisioner.push(&desired.peers, user, id).await?;
                    // in effect for the drift check before it may look again
                    *settings.peers.lock().expect("peers") = Some(desired.peers.clone());
                    Ok(())
                },
                span,
            ))
        });
        let mut provisioning = self
            .manager
            .configuration
            .provisioning
            .lock()
            .expect("provisioning");
        match result {
            Ok(()) => {
                provisioning.last_push = Some(crate::netconf::server::now_rfc3339());
                provisioning.last_error = None;
                // the whole interworking configuration was replaced: in sync again
                let drifted = provisioning.drift.take().is_some();
                drop(provisioning);
                if drifted {
                    self.manager.events.record(
                        CONFIGURATION_DRIFT,
                        format!("change {id} by {user} provisioned the whole interworking configuration again: the controller's is the manager's again"),
                        Refs::default(),
                    );
                }
                Ok(())
            }
            Err(error) => {
                provisioning.last_error = Some(error.to_string());
                drop(provisioning);
                self.manager.events.record(
                    PROVISIONING_FAILED,
                    format!("change by {user} not made: {error}"),
                    Refs::default(),
                );
                Err(error.to_rpc_error())
            }
        }
    }
}

impl Application for Operator {
    fn security_event(&self, event: crate::netconf::server::SecurityEvent) {
        let crate::netconf::server::SecurityEvent::AuthFailure {
            user,
            source,
            method,
            ..
        } = &event;
        self.manager.security.refusals.record(
            crate::refusals::Point::Netconf,
            "authentication-failed",
            crate::refusals::Source::new(*source, Some(user.clone())),
            &format!("{method} login of {user} failed"),
        );
    }

    fn initial_config(&self) -> String {
        self.initial.clone()
    }

    fn apply(&self, old: &DataTree<'static>, new: &DataTree<'static>) -> Result<(), RpcError> {
        let desired = configuration::read(new)?;
        configuration::check(&self.manager.config, &desired)?;
        if !self.started.load(Ordering::Acquire) {
            // the configuration the manager starts with: its own already
            self.manager.configuration.set(&desired);
            return Ok(());
        }
        let before = configuration::read(old)?;
        let diff = configuration::diff(old, new);
        if diff.is_empty() && before == desired {
            return Ok(());
        }
        let user = crate::netconf::server::current_user().unwrap_or_else(|| "system".into());
        // applies are serialized by the server's datastore lock: this id is the next one
        let id = self.manager.configuration.last_id.load(Ordering::Relaxed) + 1;
        let provisioned = match &self.provisioner {
            Some(provisioner) if before.peers != desired.peers => {
                self.push(provisioner, &desired, &user, id)?;
                true
            }
            _ => false,
        };
        self.manager.configuration.set(&desired);
        let change = Change {
            id,
            time: crate::netconf::server::now_rfc3339(),
            user: user.clone(),
            provisioned,
            diff,
        };
        self.manager.events.record(
            CONFIGURATION_CHANGE,
            format!(
                "change {id} by {user}{}: {}",
                if provisioned {
                    ", provisioned on the controller"
                } else {
                    ""
                },
                change.diff.join("; ")
            ),
            Refs::default(),
        );
        match Notification::from_leaves(
            model::MODULE,
            model::NAMESPACE,
            crate::model::notification_name(cc::PARENT),
            &[
                (cc::ID, id.to_string()),
                (cc::USER, user),
                (cc::SUMMARY, change.diff.join("\n")),
            ],
            change.time.clone(),
        ) {
            Ok(notification) => {
                let _ = self.notifications.send(notification);
            }
            Err(error) => tracing::warn!(%error, "configuration change not expressible in YANG"),
        }
        self.manager.configuration.record(change);
        Ok(())
    }

    fn state(&self) -> Result<DataTree<'static>, RpcError> {
        state::state(
            &self.manager,
            self.provisioner.as_ref().map(Provisioner::address),
        )
    }

    fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }

    fn audit(&self) -> Option<&crate::audit::AuditLog> {
        // every change of the running datastore, with the user, in the hash-chained log
        Some(&self.manager.audit)
    }
}

/// The peers in a comparable form (by name, classes sorted).
fn normalized(peers: &[configuration::PeerDomain]) -> Vec<configuration::PeerDomain> {
    let mut out = peers.to_vec();
    for p in &mut out {
        p.qos_classes.sort();
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Checks every `every` that the controller's interworking configuration is the manager's.
/// One changed other than through the manager (a direct NETCONF edit of the controller) is
/// configuration drift: a `configuration-drift` event when it starts (or changes) and when it
/// ends, and `provisioning/drift` state meanwhile. The manager does not undo it by itself
/// (an operator may be repairing something at the controller); its next commit that changes
/// the interworking configuration provisions the whole of it again. Ends with the manager's
/// NETCONF server (`server`).
async fn watch_drift(
    manager: Arc<Manager>,
    provisioner: Provisioner,
    every: Duration,
    server: tokio::task::AbortHandle,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if server.is_finished() {
            // the manager's NETCONF server stopped: so does the check
            return;
        }
        let settings = &manager.configuration;
        // not while a commit is provisioning the controller
        let _pushing = settings.pushing.lock().await;
        let Some(desired) = settings.peers.lock().expect("peers").clone() else {
            continue;
        };
        let actual = match provisioner.read().await {
            Ok(actual) => actual,
            Err(error) => {
                tracing::debug!(%error, "drift check: controller not read");
                continue;
            }
        };
        let drift = (normalized(&actual) != normalized(&desired)).then(|| {
            let names = |peers: &[configuration::PeerDomain]| {
                normalized(peers)
                    .iter()
                    .map(|p| {
                        format!(
                            "{} (expose saes {}, key rate {}; classes {})",
                            p.name,
                            p.expose_saes,
                            p.expose_key_rate,
                            p.qos_classes.join(" ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "the controller has [{}], the manager provisioned [{}]",
                names(&actual),
                names(&desired)
            )
        });
        let changed = {
            let mut provisioning = settings.provisioning.lock().expect("provisioning");
            let changed = provisioning.drift != drift;
            provisioning.drift.clone_from(&drift);
            changed
        };
        if !changed {
            continue;
        }
        let message = match &drift {
            Some(what) => {
                tracing::warn!(%what, "configuration drift");
                format!("the controller's interworking configuration was changed other than through the manager: {what}")
            }
            None => "the controller's interworking configuration is the manager's again".into(),
        };
        manager
            .events
            .record(CONFIGURATION_DRIFT, message, Refs::default());
    }
}

/// Starts the manager's NETCONF server, if it has one: the server, bound to its address
/// (returned), serving until the handle is aborted.
pub async fn start(
    manager: &Arc<Manager>,
) -> Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>, ServerError> {
    let Some(netconf) = manager.config.netconf.clone() else {
        return Ok(None);
    };
    let provisioner = manager
        .config
        .controller
        .as_ref()
        .and_then(|c| c.netconf.as_ref())
        .map(Provisioner::new);
    // the controller's configuration is read only when there is no datastore of our own
    let persisted = netconf.running_file.as_ref().is_some_and(|p| p.exists());
    let initial = if persisted {
        String::new()
    } else {
        let desired = Operator::adopt(manager, provisioner.as_ref()).await;
        configuration::initial(&desired).map_err(|e| ServerError::Initial(Box::new(e)))?
    };
    let operator = Arc::new(Operator {
        manager: manager.clone(),
        provisioner,
        initial,
        started: AtomicBool::new(false),
        notifications: broadcast::channel(64).0,
    });
    let listen = netconf.listen;
    let server = NetconfServer::new(netconf, operator.clone())?;
    operator.started.store(true, Ordering::Release);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: listen,
            source,
        })?;
    let address = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: listen,
        source,
    })?;
    tracing::info!(netconf = %address, "manager NETCONF server ready");
    let served = server.start_on(listener)?;
    if let Some(login) = manager
        .config
        .controller
        .as_ref()
        .and_then(|c| c.netconf.as_ref())
        .filter(|login| login.drift_check_seconds > 0)
    {
        tokio::spawn(watch_drift(
            manager.clone(),
            Provisioner::new(login),
            Duration::from_secs(login.drift_check_seconds),
            served.abort_handle(),
        ));
    }
    Ok(Some((address, served)))
}
