//! Key relay between KMs (the KMA's hop-by-hop relay inside a domain).
//!
//! The KM of the master SAE makes the keys from its own blocks of the first hop's link key
//! pool: the peer holds the same blocks, so the first hop only names them. Every further hop
//! re-encrypts the keys with a one-time pad from its own link. Every hop message is
//! authenticated with a one-time MAC keyed by one more link block, on top of mutual TLS.
//! Before anything is consumed, the whole path reserves the blocks it needs
//! ([`crate::km::kma::reserve`]), so a relay that cannot arrive costs no link key. Blocks are removed
//! from the store before anything is sent, so no block is used twice, whatever fails
//! afterwards. The destination KM stores the keys for the slave SAEs before it
//! acknowledges; the master SAE gets its keys only after that acknowledgement.

//!
//! - [`messages`] — the hop message, its acknowledgement, the bounds;
//! - [`error`] — why a relay fails;
//! - [`send`] — supplying keys to a master SAE and passing them on, hop by hop;
//! - [`receive`] — checking a hop message, then delivering or forwarding its keys.

pub mod error;
pub mod messages;
pub mod receive;
pub mod send;
