//! The SSH side of the NETCONF server (RFC 6242): admission of connections, the login
//! deadline, authentication with throttling, and the `netconf` subsystem.
//!
//! A connection is admitted under the server's connection caps, which count connections
//! that have not yet started a NETCONF session; it has `login_timeout_ms` to get from the
//! TCP accept to a running session (SSH handshake, authentication, subsystem request), or
//! its socket is shut down. Sessions themselves are capped in total and per user
//! (`NetconfServer::register_session`). russh spawns each connection's protocol task
//! itself, so the deadline acts on a duplicate of the socket: shutting it down ends that
//! task, whatever it waits for.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{self, PublicKey};
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::server::{NetconfServer, SecurityEvent, ServerError};
use crate::conn_limit::Admission;

/// How a connection's login phase ended.
enum Login {
    /// The connection closed.
    Ended,
    /// The deadline passed.
    Deadline,
    /// A NETCONF session runs.
    Started,
}

/// How a server is started: over SSH, on its own listener or on one bound already.
impl NetconfServer {
    /// Serves NETCONF over SSH until the task is dropped.
    pub async fn serve(self: Arc<Self>) -> Result<(), ServerError> {
        let listener = TcpListener::bind(self.config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: self.config.listen,
                source,
            })?;
        self.serve_on(listener).await
    }

    /// Serves NETCONF over SSH on a bound listener.
    pub async fn serve_on(self: Arc<Self>, listener: TcpListener) -> Result<(), ServerError> {
        let ssh = config(&self)?;
        serve_with(self, listener, ssh).await
    }

    /// Loads the host key, then serves on `listener` in a task: once this returns `Ok`, the
    /// server answers on the listener (what a daemon needs before it reports readiness).
    pub fn start_on(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> Result<tokio::task::JoinHandle<()>, ServerError> {
        let ssh = config(&self)?;
        Ok(tokio::spawn(async move {
            if let Err(error) = serve_with(self, listener, ssh).await {
                tracing::error!(%error, "NETCONF server stopped");
            }
        }))
    }
}

/// The SSH server configuration, with the host key (created if missing).
pub(crate) fn config(server: &NetconfServer) -> Result<Arc<russh::server::Config>, ServerError> {
    let key = load_or_create_host_key(&server.config.host_key)?;
    let mut ssh = russh::server::Config {
        keys: vec![key],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    // Older clients (yuma123's yangcli over libssh2) sign with ssh-rsa (SHA-1).
    ssh.preferred.key = std::borrow::Cow::Owned(
        [
            ssh_key::Algorithm::Ed25519,
            ssh_key::Algorithm::Rsa {
                hash: Some(ssh_key::HashAlg::Sha512),
            },
            ssh_key::Algorithm::Rsa {
                hash: Some(ssh_key::HashAlg::Sha256),
            },
            ssh_key::Algorithm::Rsa { hash: None },
            ssh_key::Algorithm::Ecdsa {
                curve: ssh_key::EcdsaCurve::NistP256,
            },
        ]
        .to_vec(),
    );
    Ok(Arc::new(ssh))
}

/// Serves NETCONF over SSH on a bound listener with configuration `ssh`.
pub(crate) async fn serve_with(
    server: Arc<NetconfServer>,
    listener: TcpListener,
    ssh: Arc<russh::server::Config>,
) -> Result<(), ServerError> {
    let limits = &server.config.limits;
    let admission = Admission::new("netconf", limits.connections);
    let login_timeout = Duration::from_millis(limits.login_timeout_ms);
    tracing::info!(listen = %server.config.listen, "NETCONF server ready");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "NETCONF accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = admission.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // a second descriptor of the socket, to shut it down from here
        let killer = match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => std::net::TcpStream::from(fd),
            Err(error) => {
                tracing::warn!(%error, %peer, "cannot watch the connection: closing it");
                continue;
            }
        };
        let (started, mut phase) = watch::channel(false);
        let handler = SshHandler {
            server: server.clone(),
            user: None,
            channels: HashMap::new(),
            peer,
            started,
        };
        let ssh = ssh.clone();
        tokio::spawn(async move {
            let connection = async move {
                match russh::server::run_stream(ssh, stream, handler).await {
                    Ok(session) => {
                        if let Err(error) = session.await {
                            tracing::debug!(%peer, %error, "SSH connection ended");
                        }
                    }
                    Err(error) => tracing::debug!(%peer, %error, "SSH handshake failed"),
                }
            };
            tokio::pin!(connection);
            let login = tokio::select! {
                _ = &mut connection => Login::Ended,
                _ = tokio::time::sleep(login_timeout) => Login::Deadline,
                Ok(_) = phase.wait_for(|started| *started) => Login::Started,
            };
            match login {
                Login::Ended => return,
                Login::Deadline if !*phase.borrow() => {
                    tracing::info!(%peer, "no NETCONF session within the login timeout: closing");
                    let _ = killer.shutdown(Shutdown::Both);
                    return;
                }
                _ => {}
            }
            // in session: its place among connections still logging in is free
            drop(admitted);
            connection.await;
        });
    }
}

/// The SSH host key at `path` (OpenSSH format); a new Ed25519 key is written there (mode
/// 0600) when there is none. The testbed calls it before start to record the public key.
pub fn load_or_create_host_key(path: &PathBuf) -> Result<PrivateKey, ServerError> {
    let err = |reason: String| ServerError::HostKey {
        path: path.clone(),
        reason,
    };
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        return PrivateKey::from_openssh(&text).map_err(|e| err(e.to_string()));
    }
    let key = PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| err(e.to_string()))?;
    let text = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        file.write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(key)
}

/// The SSH side of one connection.
struct SshHandler {
    server: Arc<NetconfServer>,
    user: Option<String>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    peer: SocketAddr,
    /// Set once a NETCONF session runs on the connection (ends its login deadline).
    started: watch::Sender<bool>,
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.throttle(user).await;
        let ok = self.server.config.users.iter().any(|u| {
            u.name == user
                && u.password.as_deref().is_some_and(|p| {
                    bool::from(subtle::ConstantTimeEq::ct_eq(
                        p.as_bytes(),
                        password.as_bytes(),
                    ))
                })
        });
        Ok(self.decide(user, ok, "password"))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        key: &PublicKey,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.key_allowed(user, key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(&mut self, user: &str, key: &PublicKey) -> Result<Auth, Self::Error> {
        self.throttle(user).await;
        let ok = self.key_allowed(user, key);
        Ok(self.decide(user, ok, "publickey"))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.channels.insert(channel.id(), channel);
        Ok(true)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (open, user) = match (name, self.channels.remove(&channel), self.user.clone()) {
            ("netconf", Some(open), Some(user)) => (open, user),
            _ => return session.channel_failure(channel),
        };
        let registered = match self.server.register_session(&user) {
            Ok(registered) => registered,
            Err(reason) => {
                tracing::warn!(%user, peer = %self.peer, reason, "NETCONF session refused");
                session.channel_failure(channel)?;
                // closed too, so that a client waiting for the hello learns at once
                return session.close(channel);
            }
        };
        session.channel_success(channel)?;
        self.started.send_replace(true);
        let server = self.server.clone();
        let peer = self.peer;
        tokio::spawn(async move {
            super::session::run(server, user, peer, open.into_stream(), registered).await;
        });
        Ok(())
    }
}

impl SshHandler {
    fn key_allowed(&self, user: &str, key: &PublicKey) -> bool {
        self.server.config.users.iter().any(|u| {
            u.name == user
                && u.authorized_keys
                    .iter()
                    .filter_map(|k| PublicKey::from_openssh(k).ok())
                    .any(|k| k.key_data() == key.key_data())
        })
    }

    /// Waits as long as earlier failures from this source or for this user demand, before
    /// the attempt is checked (successes wait too, so that waiting is no hint).
    async fn throttle(&self, user: &str) {
        let delay = self.server.throttle.delay(self.peer.ip(), user);
        if !delay.is_zero() {
            tracing::debug!(%user, peer = %self.peer, delay_ms = delay.as_millis() as u64, "login attempt delayed");
            tokio::time::sleep(delay).await;
        }
    }

    fn decide(&mut self, user: &str, ok: bool, method: &'static str) -> Auth {
        if ok {
            tracing::info!(%user, peer = %self.peer, method, "NETCONF user authenticated");
            self.server.throttle.succeed(user);
            self.user = Some(user.to_owned());
            return Auth::Accept;
        }
        let source = self.peer.ip();
        let failures = self.server.throttle.fail(source, user);
        let delay_ms = self.server.throttle.delay(source, user).as_millis() as u64;
        let shown: String = user.chars().take(64).collect();
        tracing::warn!(
            user = %shown,
            peer = %self.peer,
            method,
            failures_from_source = failures.source,
            failures_for_user = failures.user,
            delay_ms,
            "NETCONF authentication failed"
        );
        self.server.app.security_event(SecurityEvent::AuthFailure {
            user: shown,
            source,
            method,
            failures_from_source: failures.source,
            failures_for_user: failures.user,
            delay_ms,
        });
        Auth::reject()
    }
}
