//! NETCONF (RFC 6241) over SSH (RFC 6242), shared by every qkdni daemon (server) and by the
//! controller's southbound (client).
//!
//! - [`framing`] — base:1.0 and base:1.1 message framing (tokio codec);
//! - [`limits`] — depth, element and attribute bounds checked before parsing;
//! - [`xml`] — reading and writing the XML of messages, subtree filters;
//! - [`error`] — `rpc-error`;
//! - [`datastore`] — running and candidate datastores on libyang trees, the edit engine;
//! - [`server`] — users and access groups, the state every session shares (datastores,
//!   sessions, the pending confirmed commit);
//! - [`session`] — one NETCONF session (hello, RPC loop, notifications, idle timeout);
//! - [`ssh`] — starting a server: SSH connections, admission, login deadline,
//!   authentication;
//! - [`throttle`] — slowing down password guessing;
//! - [`rpc`] — the protocol operations (a file each for reading, editing, locks, commits);
//! - [`client`] — an async client on the same framing;
//! - [`known_hosts`] — the SSH host keys clients accept (OpenSSH `known_hosts`);
//! - [`pool`] — one reused client session per agent.

pub mod client;
pub mod datastore;
pub mod error;
pub mod framing;
pub mod known_hosts;
pub mod limits;
pub mod pool;
pub mod rpc;
pub mod server;
pub mod session;
pub mod ssh;
pub mod throttle;
pub mod xml;

pub use error::{ErrorTag, ErrorType, RpcError};

/// Capabilities of the base protocol.
pub const BASE_1_0: &str = "urn:ietf:params:netconf:base:1.0";
pub const BASE_1_1: &str = "urn:ietf:params:netconf:base:1.1";
