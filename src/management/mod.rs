//! The management layer: the QKDN manager of one domain (`qkdni manager --config <file>`),
//! with the roles Y.3818 names for fault management of interworking key relay (9.1 item 3):
//!
//! - [`kmlm`] — key management layer manager: follows the KMs' NETCONF notifications and
//!   reports relay failures to the XLMO;
//! - [`qlm`] — quantum layer manager: reads the QKD links' state and key rates;
//! - [`xlmo`] — cross-layer management orchestrator: shares interworking faults and report
//!   packs (performance and security) with the peer domain's XLMO over [`mxi`];
//! - [`qclm`] — QKDN control layer manager: decides on diagnoses, asking the domain's
//!   controller to check and reroute;
//! - [`control_layer`] — the QCLM's reading of the controller's figures and refusals for
//!   the report packs;
//! - [`mxi`] — the Mxi server and client (HTTPS, mutual TLS), messages in [`mxi::messages`]
//!   (JSON Schemas in `schemas/mxi/v1/`, see [`mxi::schemas`]);
//! - [`accounting`] — the domain's usage (read from the KMs) and its reconciliation with
//!   the peer domain over Mxi;
//! - [`rest`] — the manager's REST API (health, events, latest reports);
//! - [`northbound`] — the manager's NETCONF server (`qkdni-manager`): operators configure
//!   the domain's interworking there, and the manager provisions its controller;
//! - [`instance`] — the manager: its roles, event log and counters, and its start;
//! - [`events`] — the event log and security counters; [`config`] — the configuration.
//!
//! Procedure (domains A and B): a KM of A emits `relay-failure` toward a node outside A →
//! KMLM-A (`kmlm-relay-failure`) → XLMO-A sends a fault report to XLMO-B
//! (`xlmo-fault-sent`) and gives QCLM-A a diagnosis (`qclm-diagnosis`); XLMO-B receives it
//! (`xlmo-fault-received`) and gives QCLM-B a diagnosis; each QCLM asks its controller
//! (`qclm-decision`). Every `report_seconds` each XLMO sends a report pack
//! (`xlmo-reports-sent`, `xlmo-reports-received`).

pub mod accounting;
pub mod config;
pub mod control_layer;
pub mod events;
pub mod instance;
pub mod kmlm;
pub mod mxi;
pub mod northbound;
pub mod qclm;
pub mod qlm;
pub mod rest;
pub mod xlmo;

#[cfg(test)]
mod tests;

use crate::tls::TlsError;

pub use instance::{run, Manager, ManagerMetrics};

/// Errors that stop a manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config_file::ConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("southbound: {0}")]
    HostKeys(#[from] crate::netconf::known_hosts::HostKeyError),
    #[error(transparent)]
    Readiness(#[from] crate::readiness::ReadinessError),
    #[error("NETCONF: {0}")]
    Netconf(#[from] crate::netconf::server::ServerError),
}
