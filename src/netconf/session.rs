//! One NETCONF session: hello exchange, framing negotiation, the RPC loop, notifications.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::Instrument;

use super::error::{ErrorTag, ErrorType, RpcError};
use super::framing::{Framing, FramingError, NetconfCodec};
use super::rpc::{self, Outcome, SessionState};
use super::server::{NetconfServer, Notification};
use super::xml::{NS_BASE, NS_NOTIFICATION};
use super::{BASE_1_0, BASE_1_1};

/// Runs a session over an SSH channel until it closes; `registered` is its id and kill
/// switch from `NetconfServer::register_session`.
pub async fn run<S>(
    server: Arc<NetconfServer>,
    user: String,
    peer: SocketAddr,
    stream: S,
    registered: (u32, tokio::sync::watch::Receiver<bool>),
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (id, mut killed) = registered;
    let idle_timeout = std::time::Duration::from_millis(server.config.limits.idle_timeout_ms);
    let span = tracing::info_span!("netconf_session", session = id, %user, %peer);
    async {
        let (read, write) = tokio::io::split(stream);
        let max = server.config.max_message_bytes;
        let mut input = FramedRead::new(
            read,
            NetconfCodec::with_budget(max, server.buffered.clone()),
        );
        let mut output = FramedWrite::new(write, NetconfCodec::new(max));
        if output.send(hello(&server, id)).await.is_err() {
            return;
        }
        // The client's hello decides the framing.
        let chunked = match input.next().await {
            Some(Ok(message)) => match client_hello(&message) {
                Ok(chunked) => chunked,
                Err(reason) => {
                    tracing::warn!(reason, "bad client hello: closing");
                    return;
                }
            },
            _ => return,
        };
        let framing = if chunked {
            Framing::Chunked
        } else {
            Framing::EndOfMessage
        };
        input.decoder_mut().set_framing(framing);
        output.encoder_mut().set_framing(framing);
        tracing::info!(?framing, "NETCONF session started");
        let mut state = SessionState {
            id,
            user: user.clone(),
            subscription: None,
        };
        let mut notifications: Option<broadcast::Receiver<Notification>> = None;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                message = input.next() => {
                    let message = match message {
                        Some(Ok(message)) => message,
                        Some(Err(FramingError::TooLarge(max))) => {
                            // RFC 6241 appendix A: too-big; the rest of the message cannot
                            // be skipped reliably, so the session ends after the answer
                            tracing::warn!(max, "message over the size limit: closing the session");
                            let error = RpcError::new(
                                ErrorType::Rpc,
                                ErrorTag::TooBig,
                                format!("a message may hold at most {max} bytes"),
                            );
                            let _ = output.send(error_reply(&error)).await;
                            break;
                        }
                        Some(Err(FramingError::OverBudget(held))) => {
                            // RFC 6241 appendix A: resource-denied, for lack of memory
                            tracing::warn!(held, "incoming messages over the server's buffer budget: closing the session");
                            let error = RpcError::new(
                                ErrorType::Rpc,
                                ErrorTag::ResourceDenied,
                                "the server holds too much of incoming messages; try again later",
                            );
                            let _ = output.send(error_reply(&error)).await;
                            break;
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "framing error: closing the session");
                            break;
                        }
                        None => break,
                    };
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    let outcome = rpc::handle(&server, &mut state, &message).await;
                    let (reply, close) = match outcome {
                        Outcome::Reply(reply) => (reply, false),
                        Outcome::Close(reply) => (reply, true),
                    };
                    if output.send(reply).await.is_err() {
                        break;
                    }
                    if close {
                        break;
                    }
                    if state.subscription.is_some() && notifications.is_none() {
                        notifications = Some(server.app.notifications());
                    }
                }
                notification = recv(&mut notifications) => {
                    match notification {
                        Ok(n) => {
                            let wanted = match &state.subscription {
                                Some(None) => true,
                                Some(Some(kinds)) => kinds.contains(&n.kind),
                                None => false,
                            };
                            if wanted && output.send(notification_xml(&n)).await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "notifications dropped for a slow subscriber");
                        }
                        Err(broadcast::error::RecvError::Closed) => notifications = None,
                    }
                }
                _ = killed.changed() => {
                    tracing::info!("session killed");
                    break;
                }
                _ = &mut idle, if state.subscription.is_none() => {
                    tracing::info!(idle_ms = idle_timeout.as_millis() as u64, "idle session: closing");
                    break;
                }
            }
        }
        tracing::info!("NETCONF session ended");
    }
    .instrument(span)
    .await;
    server.end_session(id);
}

async fn recv(
    receiver: &mut Option<broadcast::Receiver<Notification>>,
) -> Result<Notification, broadcast::error::RecvError> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// An `rpc-reply` carrying `error`, for a message that could not be read (so without a
/// `message-id`).
fn error_reply(error: &RpcError) -> String {
    format!(
        "<rpc-reply xmlns=\"{NS_BASE}\">{}</rpc-reply>",
        error.to_xml()
    )
}

fn notification_xml(n: &Notification) -> String {
    format!(
        "<notification xmlns=\"{NS_NOTIFICATION}\"><eventTime>{}</eventTime>{}</notification>",
        n.event_time, n.xml
    )
}

/// The server's hello.
fn hello(server: &NetconfServer, id: u32) -> String {
    let mut caps = String::new();
    for cap in rpc::capabilities(server) {
        caps.push_str("<capability>");
        caps.push_str(&quick_xml::escape::escape(cap.as_str()));
        caps.push_str("</capability>");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><hello xmlns=\"{NS_BASE}\"><capabilities>{caps}</capabilities><session-id>{id}</session-id></hello>"
    )
}

/// Checks the client's hello; returns whether both sides speak base:1.1.
fn client_hello(message: &str) -> Result<bool, &'static str> {
    let doc =
        super::limits::parse(message.trim_start()).map_err(|_| "not XML or over the limits")?;
    let root = doc.root_element();
    if root.tag_name().name() != "hello" || root.tag_name().namespace() != Some(NS_BASE) {
        return Err("not a hello");
    }
    if root
        .descendants()
        .any(|n| n.tag_name().name() == "session-id")
    {
        return Err("a client hello must not carry a session-id");
    }
    let caps: Vec<&str> = root
        .descendants()
        .filter(|n| n.tag_name().name() == "capability")
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    if caps.contains(&BASE_1_1) {
        Ok(true)
    } else if caps.contains(&BASE_1_0) {
        Ok(false)
    } else {
        Err("no common base capability")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_negotiates_framing() {
        let v11 = format!("<hello xmlns=\"{NS_BASE}\"><capabilities><capability>{BASE_1_0}</capability><capability>{BASE_1_1}</capability></capabilities></hello>");
        assert_eq!(client_hello(&v11), Ok(true));
        let v10 = format!("<hello xmlns=\"{NS_BASE}\"><capabilities><capability>{BASE_1_0}</capability></capabilities></hello>");
        assert_eq!(client_hello(&v10), Ok(false));
        assert!(client_hello("<hello/>").is_err());
        assert!(client_hello(&format!(
            "<hello xmlns=\"{NS_BASE}\"><session-id>4</session-id></hello>"
        ))
        .is_err());
        assert!(client_hello("<<<").is_err());
    }
}
