//! QoS admission at a distributed domain's speaker (Y.3818 clause 7, policy-based control):
//! what a centralized controller does in [`crate::control::admission`], with the speaker's
//! KM QoS policy (`key-manager/qos`) and the link-state database. A session's guarantee is
//! held on the links of the domain's path with the fewest hops between the two nodes its keys
//! cross (the origin KM and the exit gateway, or the entry gateway and the slave's KM), as
//! every node routes by the same database; each link's key rate is the database's.
//! Sessions of the peer are admitted when prepared (a refusal is the vote's reason), this
//! domain's own ones before their crossings are proposed; reservations are released when a
//! session ends or is aborted, and those of prepares never committed once they lapse.

use uuid::Uuid;

use super::Gateway;
use crate::control::admission::{Admission, AdmissionRefusal, Reservation, Shares};
use crate::km::qos::ClassSpec;

impl Gateway {
    /// The speaker's admission with the KM's QoS policy in force (`None` without a speaker).
    pub(super) fn admission(&self) -> Option<&Admission> {
        let speaker = self.speaker.as_ref()?;
        if let Some(agent) = self.agent() {
            speaker.admission.set_policy((*agent.qos.policy()).clone());
        }
        Some(&speaker.admission)
    }

    /// Admits `session` of `class` on the domain's path from `a` to `b` (fewest hops in the
    /// link-state database) and holds its guarantee there, or refuses and changes nothing.
    pub(super) fn admit_between(
        &self,
        session: Uuid,
        class: &ClassSpec,
        a: &str,
        b: &str,
    ) -> Result<(), String> {
        let Some(admission) = self.admission() else {
            return Ok(());
        };
        let control = self
            .agent()
            .and_then(|agent| agent.local_control().cloned())
            .ok_or("no link state")?;
        let net = control.network();
        let links = crate::control::link_state::routes::links_between(&net, a, b)
            .ok_or_else(|| format!("no route from {a} to {b}"))?;
        let shares: Shares = links.into_iter().map(|l| (l, 1.0)).collect();
        admission
            .admit_with(session, class, shares, |id| {
                net.links
                    .iter()
                    .find(|l| l.id == id)
                    .map(|l| l.key_rate_bps)
            })
            .map_err(|refusal: AdmissionRefusal| {
                tracing::info!(%session, %refusal, "interworking session not admitted");
                refusal.to_string()
            })
    }

    /// Releases what `session` holds.
    pub(super) fn release(&self, session: Uuid) {
        if let Some(speaker) = &self.speaker {
            speaker.admission.release(session);
        }
    }

    /// What `session` holds now, put back when the returned guard drops unless it is kept
    /// ([`Held::keep`]): an agreement that fails leaves the reservations as they were.
    pub(super) fn hold(&self, session: Uuid) -> Held<'_> {
        Held {
            gateway: self,
            session,
            before: self
                .speaker
                .as_ref()
                .and_then(|s| s.admission.held(session)),
            kept: false,
        }
    }
}

/// See [`Gateway::hold`].
pub(super) struct Held<'g> {
    gateway: &'g Gateway,
    session: Uuid,
    before: Option<Reservation>,
    kept: bool,
}

impl Held<'_> {
    /// The agreement stands: what the session holds now stays.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.kept {
            if let Some(speaker) = &self.gateway.speaker {
                speaker.admission.restore(self.session, self.before.take());
            }
        }
    }
}
