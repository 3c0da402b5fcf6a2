//! Ck, the reference point between the controller and its domain's KMs (Y.3800):
//!
//! - [`southbound`] — reading the agents and installing relay routes over NETCONF, all or
//!   none (the controller as a client of each KM's `qkdni-km` model);
//! - [`server`] — the KMs' requests to the controller (an interworking or on-demand route
//!   for an SAE the KM has no route to).

pub mod server;
pub mod southbound;
