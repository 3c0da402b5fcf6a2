//! The interworking reference points of a KM between QKDNs: a gateway node's (Y.3818 6.1)
//! and an interworking node's (6.2), both on ETSI GS QKD 020 V1.1.1 (the API between key
//! management systems of different providers or domains): `GET /kmapi/versions`, `POST
//! /kmapi/v1/ext_keys` (answered `202` and acknowledged later by `POST
//! /kmapi/v1/ext_keys/ack` to the caller, or `200` with the acknowledgement when the request
//! has no `ack_callback_url`), `POST /kmapi/v1/ext_keys/void`; errors are RFC 9457 problems.
//! qkdni's relay data rides in the standard's extensions ([`messages`]).
//! - **Kxi-1** (KMA-KMA across a Qx link): keys one-time-padded with blocks of the Qx link,
//!   the body authenticated with a one-time MAC keyed by one more block (header
//!   `Kxi-Authentication: block=<n>, tag=<base64>`), on top of mutual TLS between the two
//!   domains' CAs.
//! - **Kxi-1'** (KMA-KMA across an IWN's transfer link): the keys themselves, mutual TLS
//!   inside the trusted node ([`transfer`]); a plain body of a third party is accepted when
//!   its target SAEs are served by one KM this KM routes to.
//! - **Kxi-2 / Kxi-2'** (KSA-KSA): a KM asks its peer what became of a relay or transfer
//!   (`GET /kxi2/v1/relays/{relay_id}`: status and key ids) when an acknowledgement does not
//!   come, so both domains agree whether the keys exist before the master SAE gets them; an
//!   IWN's voids are kept durably and retried until answered ([`settle`]).
//!
//! - [`messages`] — the standard's bodies, qkdni's extensions, the checks;
//! - [`problem`] — the standard's problem details;
//! - [`state`] — acknowledgements awaited, relays received over Qx;
//! - [`send`] — a relay sent over Qx, and the exchange both link kinds share;
//! - [`ext_keys`] — keys offered by a peer, checked and taken in (Qx path here);
//! - [`transfer`] — Kxi-1' sending and receiving;
//! - [`settle`] — Kxi-2' status, voids, withdrawals, the settlement after a restart;
//! - [`server`] — the routes.

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
