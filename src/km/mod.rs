//! The key management layer: the key manager (KM) of a QKD node.
//!
//! One folder per reference point, as in the layer diagram of Y.3818 clause 6:
//!
//! - [`ksa`] — the key supply agent, serving SAEs over ETSI GS QKD 014 (admission control,
//!   applications, expiry of keys not fetched in time);
//! - [`kma`] — the key management agent: the KMA server (peer KMs, emulated quantum channel,
//!   operators), hop-by-hop key relay, path reservation, one-time pad;
//! - [`kxi`] — a gateway node's interworking reference points Kxi-1 (ETSI GS QKD 020 shape)
//!   and Kxi-2;
//! - [`ck`] — the KM's requests to its domain's controller;
//! - [`local_control`] — a distributed QKDN's local controller in the KM (link-state routing);
//! - [`northbound`] — the agent under NETCONF (configuration, state, notifications);
//! - [`qos`] — QoS classes: which request gets link key when it is scarce, and quotas;
//!
//! and what they share:
//!
//! - [`store`] — durable link key pools and keys awaiting delivery;
//! - [`accounting`] — usage records per SAE and peer domain, summarized per period;
//! - [`events`] — the agent's events; [`key_alarm`] — the low-key alarm;
//! - [`limits`] — limits against load and abuse (listeners, admission, undelivered keys);
//! - [`metrics`] — Prometheus metrics of links, the ETSI 014 API and relays;
//! - [`config`] — the agent's configuration file;
//! - [`agent`] — the agent's shared state, which every part above holds;
//! - [`instance`] — the daemon's start, which ties them together.

pub mod accounting;
pub mod agent;
pub mod ck;
pub mod config;
pub mod events;
pub mod instance;
pub mod key_alarm;
pub mod kma;
pub mod ksa;
pub mod kxi;
pub mod limits;
pub mod local_control;
pub mod metrics;
pub mod northbound;
pub mod qos;
pub mod store;
