//! qkdni: an SDN control plane for interworking QKD networks (ITU-T Y.3818).
//!
//! The modules follow the layers of the QKDN architecture (ITU-T Y.3800/Y.3802):
//! - [`quantum`]: the quantum layer (emulated QKD modules and links, physical link model);
//! - [`km`]: the key management layer (key manager agent: KMA relay, KSA key supply, key store);
//! - [`management`]: the management layer (the QKDN manager of a domain: KMLM, QLM, XLMO, QCLM, Mxi);
//! - [`testbed`]: bringing emulated domains up and down on one machine;
//!
//! and the interface modules they share: [`etsi014`] (key delivery API data formats),
//! [`tls`] (mutual TLS for every reference point) and [`pki`] (certificates for testbeds).

pub mod audit;
pub mod bench_chaos;
pub mod bench_delivery;
pub mod bench_flood;
pub mod bench_idle;
pub mod bench_interworking;
pub mod bench_link_state;
pub mod bench_on_demand;
pub mod bench_routing;
pub mod config_file;
pub mod conn_limit;
pub mod control;
pub mod ctl;
pub mod etsi014;
pub mod etsi015;
pub mod https;
pub mod km;
pub mod management;
pub mod metrics;
pub mod model;
pub mod netconf;
pub mod nonrepudiation;
pub mod pki;
pub mod problem;
pub mod quantum;
pub mod readiness;
pub mod refusals;
pub mod testbed;
pub mod tls;
pub mod yang;
