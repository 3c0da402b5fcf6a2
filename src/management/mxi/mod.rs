//! Mxi, the reference point between the QKDN managers of two domains (Y.3818 6.1): an
//! HTTPS server and client with mutual TLS.
//!
//! The server accepts requests only from the configured peer manager, i.e. a client whose
//! certificate the peer domain's CA issued to `peer.manager_name` (identity
//! `manager_name@domain`); anyone else gets `403`. Resources:
//! - `POST /mxi/v1/faults`: an interworking fault report ([`messages::FaultReport`]) → `202`;
//! - `POST /mxi/v1/reports`: a report pack ([`messages::ReportPack`]) → `202`;
//! - `POST /mxi/v1/usage-summaries`: a usage summary of a closed period
//!   ([`messages::UsageSummary`]) → `200` with the receiver's verdict and own summary
//!   ([`messages::UsageReply`]), see [`crate::management::accounting`];
//! - `GET /mxi/v1/versions`: `{"versions":[1]}`.
//!
//! Malformed bodies and unsupported versions get `400`; every error is an RFC 9457 problem.

pub mod client;
pub mod messages;
pub mod schemas;
pub mod server;

pub use client::{MxiClient, SendError};
pub use server::{router, serve, Accepted};
