//! The interworking reference points of a gateway node's KM (Y.3818 6.1):
//! - **Kxi-1** (KMA-KMA, across a Qx link): interworking key relay in the shape of ETSI GS QKD
//!   020, the API between key management systems of different providers: `POST
//!   /kmapi/v1/ext_keys` (answered `202`, then an acknowledgement callback `POST
//!   /kmapi/v1/ext_keys/ack` with `ack_status`), `POST /kmapi/v1/ext_keys/void` and `GET
//!   /kmapi/versions`. Keys travel one-time-padded with blocks of the Qx link and the request
//!   body is authenticated with a one-time MAC keyed by one more block (header
//!   `Kxi-Authentication: block=<n>, tag=<base64>`), on top of mutual TLS between the two
//!   domains' CAs.
//! - **Kxi-2** (KSA-KSA): key synchronization: a GWN asks its peer what became of an
//!   interworking relay (`GET /kxi2/v1/relays/{relay_id}`) when an acknowledgement does not
//!   come, so both domains agree on whether the keys exist before the master SAE gets them.
//!
//! - [`messages`] — the messages of Kxi-1 and Kxi-2;
//! - [`state`] — what a GWN remembers: acknowledgements awaited, relays received;
//! - [`send`] — a relay sent to the peer GWN, acknowledged or settled over Kxi-2;
//! - [`server`] — the routes a GWN serves to its peers.

pub mod ext_keys;
pub mod messages;
pub mod problem;
#[cfg(test)]
mod schema_tests;
pub mod send;
pub mod server;
pub mod settle;
#[cfg(test)]
mod settle_tests;
pub mod state;
pub mod transfer;
