//! The control layer: the QKDN controller of one domain (centralized control, Y.3802).
//!
//! - [`config`] — the controller's configuration;
//! - [`topology`] — the domain as the controller sees it, live from the agents;
//! - [`sessions`] — key supply sessions and their durable store;
//! - [`controller`] — the controller's handle: reads from the published view, changes as
//!   inputs to the instance, events;
//! - [`error`] — the controller's errors and the replies of the instance;
//! - [`instance`] — the one task that owns the state: jobs, installs in tasks;
//! - [`jobs`] — how each job starts and finishes (commit or undo);
//! - [`state`] — the state the instance owns;
//! - [`messages`] — the instance's inputs and the view it publishes;
//! - [`creation`] — new sessions, local or agreed with the peer;
//! - [`admission`] — QoS classes and the admission of new sessions by their guaranteed rates;
//! - [`expiry`] — on-demand sessions removed when their SAE pair no longer asks for keys;
//! - [`metrics`] — Prometheus metrics of sessions, installs, reroutes and Cxi;
//! - [`figures`] — control-layer figures and refusals for the manager's report packs;
//! - [`reroute`] — rerouting on faults and key rate shortfalls;
//! - [`routes`] — the relay route tables the KMs should hold, and the difference to what they hold;
//! - [`link_state`] — distributed control: the link-state routing of a node of a distributed
//!   QKDN; [`gateway`] — the interworking function its gateway nodes carry;
//! - [`cxi`] — Cxi, between the controllers of two QKDNs: messages and client, server,
//!   the coordinator's agreement, the receiving domain's segments, the peers' state;
//! - [`ck`] — Ck, between the controller and its KMs: NETCONF southbound, KMs' route requests;
//! - [`transfers`] — transfer key life-cycle records from the IWN KMs (Y.3818 9.2);
//! - [`rest`] — the REST API for orchestrators (OpenAPI); `credentials` who may use it;
//! - [`dashboard`] — the live web dashboard (HTTPS, on the REST listener, one-time logins);
//! - [`northbound`] — the controller under NETCONF for operators (`qkdni-controller` model:
//!   configuration, state, notifications).

pub mod admission;
pub mod ck;
pub mod config;
pub mod controller;
mod creation;
mod credentials;
pub mod cxi;
pub mod dashboard;
pub mod error;
mod expiry;
pub mod figures;
pub mod gateway;
pub mod instance;
mod jobs;
pub mod link_state;
mod messages;
pub mod metrics;
pub mod northbound;
mod reroute;
pub mod rest;
mod routes;
pub mod sessions;
mod state;
pub mod topology;
pub mod transfers;
