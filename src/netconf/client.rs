//! An async NETCONF client over SSH (russh), on the same framing as the server: used by the
//! controller's southbound. One connection per agent, RPCs matched to replies by message-id,
//! per-RPC timeouts, typed `rpc-error`s, a notification stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use quick_xml::escape::escape;
use russh::keys::ssh_key::PublicKey;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh::ChannelStream;
use tokio::io::WriteHalf;
use tokio::sync::{broadcast, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::error::{ErrorTag, ErrorType, RpcError};
use super::framing::{Framing, NetconfCodec};
use super::known_hosts::{self, HostKeyError};
use super::limits;
use super::xml::NS_BASE;
use super::{BASE_1_0, BASE_1_1};

/// How the client authenticates.
#[derive(Clone)]
pub enum Credentials {
    Password(String),
    Key(Arc<PrivateKey>),
}

/// How the client checks the server's SSH host key (before it authenticates).
#[derive(Clone, Debug)]
pub enum HostKeyCheck {
    /// Any key is accepted and its fingerprint logged: only for tools that talk to a server
    /// they have just started themselves.
    AcceptAny,
    /// Exactly this key.
    Key(PublicKey),
    /// The key recorded for the server's address in an OpenSSH `known_hosts` file (see
    /// [`known_hosts`](super::known_hosts)); an unknown or changed key is refused.
    KnownHosts(PathBuf),
}

/// Connection parameters.
#[derive(Clone)]
pub struct ClientOptions {
    pub user: String,
    pub credentials: Credentials,
    /// How the server's host key is checked.
    pub host_key: HostKeyCheck,
    /// Timeout of the connection (TCP, SSH, authentication, hello).
    pub connect_timeout: Duration,
    /// Timeout of each RPC.
    pub timeout: Duration,
    /// Announce base:1.0 only (end-of-message framing throughout).
    pub base_1_0_only: bool,
}

impl ClientOptions {
    /// Options with a password login, host keys checked as `host_key` says, a 5 s connect
    /// timeout and a 10 s RPC timeout.
    pub fn password(user: &str, password: &str, host_key: HostKeyCheck) -> Self {
        Self {
            user: user.to_owned(),
            credentials: Credentials::Password(password.to_owned()),
            host_key,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            base_1_0_only: false,
        }
    }
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("SSH: {0}")]
    Ssh(#[from] russh::Error),
    #[error("authentication of user {0} refused")]
    AuthRefused(String),
    #[error("{0}")]
    HostKey(#[from] HostKeyError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("session closed")]
    Closed,
    #[error("malformed message from the server: {0}")]
    Malformed(String),
    #[error("rpc-error: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Rpc(Vec<RpcError>),
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>;
type Closed = Arc<std::sync::atomic::AtomicBool>;

/// An open NETCONF session.
pub struct NetconfClient {
    writer:
        tokio::sync::Mutex<FramedWrite<WriteHalf<ChannelStream<russh::client::Msg>>, NetconfCodec>>,
    pending: Pending,
    /// Set when the server closed the session.
    closed: Closed,
    notifications: broadcast::Sender<String>,
    next_id: AtomicU64,
    timeout: Duration,
    /// The server's session id.
    pub session_id: u32,
    /// The server's capabilities.
    pub capabilities: Vec<String>,
    _ssh: russh::client::Handle<SshClient>,
}

struct SshClient {
    server: SocketAddr,
    check: HostKeyCheck,
}

/// The SSH handler's errors: russh's, or a refused host key.
#[derive(Debug)]
enum SshError {
    Ssh(russh::Error),
    HostKey(HostKeyError),
}

impl From<russh::Error> for SshError {
    fn from(error: russh::Error) -> Self {
        Self::Ssh(error)
    }
}

impl From<SshError> for ClientError {
    fn from(error: SshError) -> Self {
        match error {
            SshError::Ssh(error) => ClientError::Ssh(error),
            SshError::HostKey(error) => ClientError::HostKey(error),
        }
    }
}

impl russh::client::Handler for SshClient {
    type Error = SshError;

    /// Runs during the key exchange, before any authentication: a refusal here ends the
    /// connection with nothing of ours sent.
    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        let verdict = match &self.check {
            HostKeyCheck::AcceptAny => {
                tracing::debug!(server = %self.server, fingerprint = %known_hosts::fingerprint(key), "accepting NETCONF server host key unchecked");
                Ok(())
            }
            HostKeyCheck::Key(expected) if expected.key_data() == key.key_data() => Ok(()),
            HostKeyCheck::Key(_) => Err(HostKeyError::NotExpected {
                server: self.server,
                fingerprint: known_hosts::fingerprint(key),
            }),
            HostKeyCheck::KnownHosts(path) => {
                let (path, server, key) = (path.clone(), self.server, key.clone());
                tokio::task::spawn_blocking(move || known_hosts::check(&path, server, &key))
                    .await
                    .map_err(|e| SshError::Ssh(russh::Error::from(std::io::Error::other(e))))?
            }
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(error) => {
                tracing::warn!(server = %self.server, %error, "NETCONF server refused");
                Err(SshError::HostKey(error))
            }
        }
    }
}

fn hello(base_1_0_only: bool) -> String {
    let mut caps = format!("<capability>{BASE_1_0}</capability>");
    if !base_1_0_only {
        caps.push_str(&format!("<capability>{BASE_1_1}</capability>"));
    }
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><hello xmlns=\"{NS_BASE}\"><capabilities>{caps}</capabilities></hello>")
}

impl NetconfClient {
    /// Connects, authenticates, opens the `netconf` subsystem and exchanges hellos.
    pub async fn connect(
        addr: SocketAddr,
        options: ClientOptions,
    ) -> Result<Arc<Self>, ClientError> {
        tokio::time::timeout(
            options.connect_timeout,
            Self::connect_inner(addr, options.clone()),
        )
        .await
        .map_err(|_| ClientError::Timeout(options.connect_timeout))?
    }

    async fn connect_inner(
        addr: SocketAddr,
        options: ClientOptions,
    ) -> Result<Arc<Self>, ClientError> {
        let config = Arc::new(russh::client::Config {
            nodelay: true,
            inactivity_timeout: None,
            ..Default::default()
        });
        let mut ssh = russh::client::connect(
            config,
            addr,
            SshClient {
                server: addr,
                check: options.host_key.clone(),
            },
        )
        .await?;
        let auth = match &options.credentials {
            Credentials::Password(password) => {
                ssh.authenticate_password(&options.user, password).await?
            }
            Credentials::Key(key) => {
                let hash = ssh.best_supported_rsa_hash().await?.flatten();
                ssh.authenticate_publickey(
                    &options.user,
                    PrivateKeyWithHashAlg::new(key.clone(), hash),
                )
                .await?
            }
        };
        if !auth.success() {
            return Err(ClientError::AuthRefused(options.user.clone()));
        }
        let channel = ssh.channel_open_session().await?;
        channel.request_subsystem(true, "netconf").await?;
        let (read, write) = tokio::io::split(channel.into_stream());
        let mut reader = FramedRead::new(read, NetconfCodec::new(64 * 1024 * 1024));
        let mut writer = FramedWrite::new(write, NetconfCodec::new(64 * 1024 * 1024));
        writer
            .send(hello(options.base_1_0_only))
            .await
            .map_err(|_| ClientError::Closed)?;
        let server_hello = match reader.next().await {
            Some(Ok(message)) => message,
            _ => return Err(ClientError::Closed),
        };
        let (session_id, capabilities) = parse_hello(&server_hello)?;
        let chunked = !options.base_1_0_only && capabilities.iter().any(|c| c == BASE_1_1);
        let framing = if chunked {
            Framing::Chunked
        } else {
            Framing::EndOfMessage
        };
        reader.decoder_mut().set_framing(framing);
        writer.encoder_mut().set_framing(framing);
        let pending: Pending = Arc::default();
        let (notifications, _) = broadcast::channel(256);
        let closed = Closed::default();
        tokio::spawn(read_loop(
            reader,
            pending.clone(),
            closed.clone(),
            notifications.clone(),
        ));
        Ok(Arc::new(Self {
            writer: tokio::sync::Mutex::new(writer),
            pending,
            closed,
            notifications,
            next_id: AtomicU64::new(1),
            timeout: options.timeout,
            session_id,
            capabilities,
            _ssh: ssh,
        }))
    }

    /// Sends an operation (the XML inside `<rpc>`) and returns the reply's content; an
    /// `rpc-error` reply becomes [`ClientError::Rpc`].
    pub async fn rpc(&self, operation: &str) -> Result<String, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending").insert(id.clone(), tx);
        let message = format!("<rpc xmlns=\"{NS_BASE}\" message-id=\"{id}\">{operation}</rpc>");
        let sent = self.writer.lock().await.send(message).await;
        if sent.is_err() {
            self.pending.lock().expect("pending").remove(&id);
            return Err(ClientError::Closed);
        }
        let reply = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.pending.lock().expect("pending").remove(&id);
                return Err(ClientError::Timeout(self.timeout));
            }
        };
        parse_reply(&reply)
    }

    /// Whether the server has closed the session.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `<get>` with an optional subtree filter (XML).
    pub async fn get(&self, subtree: Option<&str>) -> Result<String, ClientError> {
        let filter = subtree
            .map(|f| format!("<filter type=\"subtree\">{f}</filter>"))
            .unwrap_or_default();
        self.rpc(&format!("<get>{filter}</get>"))
            .await
            .map(data_content)
    }

    /// `<get-config>` of `source` with an optional subtree filter.
    pub async fn get_config(
        &self,
        source: &str,
        subtree: Option<&str>,
    ) -> Result<String, ClientError> {
        let filter = subtree
            .map(|f| format!("<filter type=\"subtree\">{f}</filter>"))
            .unwrap_or_default();
        self.rpc(&format!(
            "<get-config><source><{source}/></source>{filter}</get-config>"
        ))
        .await
        .map(data_content)
    }

    /// `<edit-config>` of `target` with `config` (the XML inside `<config>`).
    pub async fn edit_config(&self, target: &str, config: &str) -> Result<(), ClientError> {
        self.rpc(&format!(
            "<edit-config><target><{target}/></target><config>{config}</config></edit-config>"
        ))
        .await
        .map(drop)
    }

    /// `<lock>` of `target`.
    pub async fn lock(&self, target: &str) -> Result<(), ClientError> {
        self.rpc(&format!("<lock><target><{target}/></target></lock>"))
            .await
            .map(drop)
    }

    /// `<unlock>` of `target`.
    pub async fn unlock(&self, target: &str) -> Result<(), ClientError> {
        self.rpc(&format!("<unlock><target><{target}/></target></unlock>"))
            .await
            .map(drop)
    }

    /// `<commit>`.
    pub async fn commit(&self) -> Result<(), ClientError> {
        self.rpc("<commit/>").await.map(drop)
    }

    /// `<discard-changes>`.
    pub async fn discard_changes(&self) -> Result<(), ClientError> {
        self.rpc("<discard-changes/>").await.map(drop)
    }

    /// `<create-subscription>` and the stream of notification messages (XML).
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<String>, ClientError> {
        let receiver = self.notifications.subscribe();
        self.rpc(
            "<create-subscription xmlns=\"urn:ietf:params:xml:ns:netconf:notification:1.0\"/>",
        )
        .await?;
        Ok(receiver)
    }

    /// `<close-session>`.
    pub async fn close(&self) -> Result<(), ClientError> {
        self.rpc("<close-session/>").await.map(drop)
    }
}

/// Escapes text for inclusion in a NETCONF message.
pub fn text(value: &str) -> String {
    escape(value).into_owned()
}

async fn read_loop<R>(
    mut reader: FramedRead<R, NetconfCodec>,
    pending: Pending,
    closed: Closed,
    notifications: broadcast::Sender<String>,
) where
    R: tokio::io::AsyncRead + Unpin,
{
    while let Some(Ok(message)) = reader.next().await {
        let Ok(doc) = limits::parse(&message) else {
            tracing::warn!("malformed or oversized message from NETCONF server");
            continue;
        };
        let root = doc.root_element();
        match root.tag_name().name() {
            "rpc-reply" => {
                let id = root.attribute("message-id").unwrap_or_default().to_owned();
                if let Some(tx) = pending.lock().expect("pending").remove(&id) {
                    let _ = tx.send(message.clone());
                }
            }
            "notification" => {
                let _ = notifications.send(message.clone());
            }
            other => tracing::warn!(element = other, "unexpected message from NETCONF server"),
        }
    }
    // dropping the senders wakes every waiter with Closed
    closed.store(true, Ordering::Release);
    pending.lock().expect("pending").clear();
}

fn parse_hello(message: &str) -> Result<(u32, Vec<String>), ClientError> {
    let doc = limits::parse(message).map_err(|e| ClientError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "hello" {
        return Err(ClientError::Malformed("expected hello".into()));
    }
    let capabilities = root
        .descendants()
        .filter(|n| n.tag_name().name() == "capability")
        .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
        .collect();
    let session_id = root
        .descendants()
        .find(|n| n.tag_name().name() == "session-id")
        .and_then(|n| n.text())
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| ClientError::Malformed("hello without session-id".into()))?;
    Ok((session_id, capabilities))
}

/// The content of an `rpc-reply`, or its errors.
fn parse_reply(message: &str) -> Result<String, ClientError> {
    let doc = limits::parse(message).map_err(|e| ClientError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    let errors: Vec<RpcError> = root
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "rpc-error")
        .map(|e| {
            let field = |name: &str| {
                e.children()
                    .find(|c| c.tag_name().name() == name)
                    .and_then(|c| c.text())
                    .map(|t| t.trim().to_owned())
            };
            let error_type = match field("error-type").as_deref() {
                Some("transport") => ErrorType::Transport,
                Some("rpc") => ErrorType::Rpc,
                Some("protocol") => ErrorType::Protocol,
                _ => ErrorType::Application,
            };
            let tag = field("error-tag")
                .and_then(|t| ErrorTag::parse(&t))
                .unwrap_or(ErrorTag::OperationFailed);
            let mut error =
                RpcError::new(error_type, tag, field("error-message").unwrap_or_default());
            error.path = field("error-path");
            error.app_tag = field("error-app-tag");
            if let Some(info) = e.children().find(|c| c.tag_name().name() == "error-info") {
                for item in info.children().filter(|c| c.is_element()) {
                    error.info.push((
                        item.tag_name().name().to_owned(),
                        item.text().unwrap_or_default().trim().to_owned(),
                    ));
                }
            }
            error
        })
        .collect();
    if !errors.is_empty() {
        return Err(ClientError::Rpc(errors));
    }
    let start = root
        .children()
        .find(|n| n.is_element())
        .map(|n| n.range().start);
    let end = root.last_element_child().map(|n| n.range().end);
    Ok(match (start, end) {
        (Some(s), Some(e)) => message[s..e].to_owned(),
        _ => String::new(),
    })
}

/// The inside of `<data>...</data>`.
fn data_content(reply: String) -> String {
    let Ok(doc) = limits::parse(&reply) else {
        return reply;
    };
    let root = doc.root_element();
    if root.tag_name().name() != "data" {
        return reply.clone();
    }
    match (root.first_element_child(), root.last_element_child()) {
        (Some(first), Some(last)) => reply[first.range().start..last.range().end].to_owned(),
        _ => String::new(),
    }
}

/// Follows the notifications of the NETCONF server at `addr` (`who`, for logs) for good:
/// subscribes, hands every notification to `handle`, and subscribes again one second after
/// the session ends or cannot be opened. Missed notifications (a slow consumer) are logged.
pub async fn follow_notifications<F, Fut>(
    addr: SocketAddr,
    options: ClientOptions,
    who: &str,
    mut handle: F,
) where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use broadcast::error::RecvError;
    loop {
        let subscribed = async {
            let session = NetconfClient::connect(addr, options.clone()).await?;
            let notifications = session.subscribe().await?;
            Ok::<_, ClientError>((session, notifications))
        }
        .await;
        match subscribed {
            Ok((session, mut notifications)) => {
                tracing::info!(%who, "following notifications");
                loop {
                    let message = tokio::select! {
                        message = notifications.recv() => message,
                        // the stream never ends by itself: notice a closed session
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {
                            if session.is_closed() {
                                tracing::info!(%who, "notification session closed; resubscribing");
                                break;
                            }
                            continue;
                        }
                    };
                    match message {
                        Ok(xml) => handle(xml).await,
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(%who, missed, "notifications missed");
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
            }
            Err(error) => tracing::debug!(%who, %error, "cannot subscribe; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
