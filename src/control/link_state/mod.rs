//! Distributed control: the link-state routing a node of a distributed QKDN runs beside its
//! KM (Y.3818 clause 8: control functions in the nodes instead of a central controller).
//!
//! Every node advertises its QKD links (up/down, key rate, stored key, QBER) and SAEs
//! ([`lsa`]); advertisements flood from neighbour to neighbour over the KMA (mutual TLS) so
//! that every node holds the same database ([`database`]); each node computes its relay next
//! hops from it with the domain's route policy, the same plugins the central controller uses
//! ([`routes`]), and recomputes on every change ([`engine`]). [`memory`] runs many nodes in
//! one process (tests, benchmark).

pub mod database;
pub mod engine;
pub mod lsa;
pub mod memory;
pub mod routes;

pub use engine::{LinkState, Local, Stats, Transport};
pub use lsa::{Flood, Lsa, LsaLink};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
