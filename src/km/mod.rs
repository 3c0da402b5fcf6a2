//! The key management layer: the key manager (KM) of a QKD node.
//!
//! - [`store`] — durable link key pools and keys awaiting delivery;
//! - [`ksa`] — the key supply agent, serving SAEs over ETSI GS QKD 014;
//! - [`relay`] — the key management agent's hop-by-hop key relay;
//! - [`reserve`] — path reservation, so a relay that cannot arrive spends no link key;
//! - [`kma`] — the KMA server (peer KMs, emulated quantum channel, operators);
//! - [`kxi`] — a gateway node's interworking reference points Kxi-1 (ETSI GS QKD 020 shape)
//!   and Kxi-2;
//! - [`admission`] — admission control of the ETSI 014 API (503 beyond the caps);
//! - [`expiry`] — erasing keys their slave SAE did not fetch in time;
//! - [`limits`] — limits against load and abuse (listeners, admission, undelivered keys);
//! - [`metrics`] — Prometheus metrics of links, the ETSI 014 API and relays;
//! - [`northbound`] — the agent under NETCONF (configuration, state, notifications);
//! - [`agent`] — the agent's shared state, which every part above holds;
//! - [`instance`] — the daemon's start, which ties them together.

pub mod admission;
pub mod agent;
pub mod applications;
pub mod ck;
pub mod config;
pub mod events;
pub mod expiry;
pub mod instance;
pub mod key_alarm;
pub mod kma;
pub mod ksa;
pub mod kxi;
pub mod limits;
pub mod metrics;
pub mod northbound;
pub mod otp;
pub mod relay;
pub mod reserve;
pub mod store;
