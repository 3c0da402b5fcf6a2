//! The interworking settings a running controller acts on: its Cxi peers, the exposure
//! policy (the domain's, and per peer), and the QoS class names each peer may use. They
//! start from the configuration file and change through NETCONF (`qkdni-controller`
//! `interworking` subtree, which the domain's QKDN manager provisions) without a restart.
//!
//! A change replaces the settings whole (one `Arc` swap): a peer removed is refused on
//! Cxi from then on (its certificate no longer names a configured peer), a peer added is
//! called and its pushes accepted at once, and every peer gets the abstract topology its
//! exposure policy allows the next moment (the push task wakes on the change).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::CxiClient;
use crate::control::config::{ControllerConfig, CxiPeer, ExposePolicy};
use crate::control::controller::Controller;
use crate::control::error::ControlError;

/// What this domain shares with one peer, beyond the domain's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Share the SAEs (`None`: the domain's policy).
    pub saes: Option<bool>,
    /// Share hop counts and key rates (`None`: the domain's policy).
    pub key_rate: Option<bool>,
    /// The QoS classes (by name) the peer's sessions may use.
    pub qos_classes: Vec<String>,
}

/// The interworking settings as configured (no clients).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InterworkingSettings {
    /// The Cxi peers, with their own policies.
    pub peers: Vec<(CxiPeer, PeerPolicy)>,
    /// The domain's exposure policy.
    pub expose: ExposePolicy,
}

impl InterworkingSettings {
    /// The settings of the configuration file.
    pub fn of_config(config: &ControllerConfig) -> Self {
        match &config.interworking {
            Some(iw) => Self {
                peers: iw
                    .peers
                    .iter()
                    .map(|p| (p.clone(), PeerPolicy::default()))
                    .collect(),
                expose: iw.expose.clone(),
            },
            None => Self::default(),
        }
    }

    /// The exposure policy toward peer `domain`.
    pub fn expose_for(&self, domain: &str) -> ExposePolicy {
        let own = self.peers.iter().find(|(p, _)| p.domain == domain);
        let mut expose = self.expose.clone();
        if let Some((_, policy)) = own {
            expose.saes = policy.saes.unwrap_or(expose.saes);
            expose.key_rate = policy.key_rate.unwrap_or(expose.key_rate);
        }
        expose
    }
}

/// The settings in effect and their Cxi clients.
pub struct Live {
    settings: RwLock<Arc<(InterworkingSettings, Arc<Vec<CxiClient>>)>>,
    changed: watch::Sender<u64>,
}

impl Live {
    /// Settings with their clients (built by [`clients`]).
    pub fn new(settings: InterworkingSettings, clients: Vec<CxiClient>) -> Self {
        Self {
            settings: RwLock::new(Arc::new((settings, Arc::new(clients)))),
            changed: watch::channel(0).0,
        }
    }

    fn current(&self) -> Arc<(InterworkingSettings, Arc<Vec<CxiClient>>)> {
        self.settings.read().expect("interworking settings").clone()
    }
}

/// Cxi clients for `settings`, reusing those of `reuse` whose peer is unchanged; fails
/// (changing nothing) when a peer's domain has no CA in `tls.peer_cas`.
pub fn clients(
    config: &ControllerConfig,
    settings: &InterworkingSettings,
    reuse: &[CxiClient],
    histogram: &crate::metrics::Durations,
) -> Result<Vec<CxiClient>, ControlError> {
    settings
        .peers
        .iter()
        .map(
            |(peer, _)| match reuse.iter().find(|c| same(&c.peer, peer)) {
                Some(client) => Ok(client.clone()),
                None => CxiClient::new(peer.clone(), &config.tls)
                    .map(|c| c.observed_in(histogram.clone()))
                    .map_err(ControlError::from),
            },
        )
        .collect()
}

fn same(a: &CxiPeer, b: &CxiPeer) -> bool {
    a.domain == b.domain && a.url == b.url && a.controller == b.controller
}

impl Controller {
    /// The Cxi clients of the peers configured now.
    pub fn peers(&self) -> Arc<Vec<CxiClient>> {
        self.interworking_live.current().1.clone()
    }

    /// The interworking settings in effect.
    pub fn interworking_settings(&self) -> InterworkingSettings {
        self.interworking_live.current().0.clone()
    }

    /// The exposure policy toward peer `domain`.
    pub fn expose_for(&self, domain: &str) -> ExposePolicy {
        self.interworking_live.current().0.expose_for(domain)
    }

    /// Checks `settings` (a Cxi client for each peer) without changing anything.
    pub fn check_interworking(&self, settings: &InterworkingSettings) -> Result<(), ControlError> {
        if self.config.interworking.is_none() && !settings.peers.is_empty() {
            return Err(ControlError::Invalid(
                "this controller has no Cxi server (no [interworking] in its configuration file): it cannot have peers".into(),
            ));
        }
        clients(
            &self.config,
            settings,
            &self.interworking_live.current().1,
            &self.metrics.cxi_round_trip_seconds,
        )
        .map(drop)
    }

    /// Puts `settings` in effect at once; returns whether they changed.
    pub fn set_interworking(&self, settings: InterworkingSettings) -> Result<bool, ControlError> {
        self.check_interworking(&settings)?;
        let live = &self.interworking_live;
        let mut current = live.settings.write().expect("interworking settings");
        if current.0 == settings {
            return Ok(false);
        }
        let clients = clients(
            &self.config,
            &settings,
            &current.1,
            &self.metrics.cxi_round_trip_seconds,
        )?;
        *current = Arc::new((settings, Arc::new(clients)));
        drop(current);
        live.changed.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Wakes when the interworking settings change.
    pub(in crate::control) fn interworking_changes(&self) -> watch::Receiver<u64> {
        self.interworking_live.changed.subscribe()
    }
}

/// The domains of `settings`' peers with their policies, by domain.
pub fn policies(settings: &InterworkingSettings) -> BTreeMap<String, PeerPolicy> {
    settings
        .peers
        .iter()
        .map(|(p, policy)| (p.domain.clone(), policy.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(domain: &str) -> CxiPeer {
        CxiPeer {
            domain: domain.into(),
            url: format!("https://{domain}.example:7000"),
            controller: format!("controller-{domain}"),
        }
    }

    #[test]
    fn a_peer_policy_overrides_the_domain_policy_leaf_by_leaf() {
        let settings = InterworkingSettings {
            peers: vec![
                (
                    peer("B"),
                    PeerPolicy {
                        saes: Some(false),
                        ..Default::default()
                    },
                ),
                (peer("C"), PeerPolicy::default()),
            ],
            expose: ExposePolicy {
                saes: true,
                key_rate: false,
            },
        };
        let b = settings.expose_for("B");
        assert!(!b.saes && !b.key_rate);
        let c = settings.expose_for("C");
        assert!(c.saes && !c.key_rate);
        assert!(settings.expose_for("unknown").saes);
        assert_eq!(policies(&settings).len(), 2);
    }
}
