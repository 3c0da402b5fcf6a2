//! The QKD applications of a KM agent in the sense of ETSI GS QKD 015: every key stream an
//! SAE served by this KM (the master, `server_app_id`) has obtained keys for, with the SAEs
//! that share them (the slaves, `client_app_id`). An application appears with the first
//! keys it is given (`sdqkdn_application_new`) and disappears when its master SAE is no
//! longer registered at this node (`sdqkdn_application_disconnected`).
//!
//! Its identifier is a UUIDv5 of the SAE names ([`crate::etsi015::app_id`]), so it is the
//! same after a restart; the list itself is kept in memory and starts empty.

use std::collections::BTreeMap;
use std::sync::Mutex;

use uuid::Uuid;

/// One application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub id: Uuid,
    /// The SAE that asked for the keys (ETSI 014 master SAE).
    pub master: String,
    /// The SAEs the keys are shared with (slave SAE first, then additional slaves).
    pub slaves: Vec<String>,
    /// When the application was first served (RFC 3339).
    pub created: String,
}

/// The applications seen since the agent started.
#[derive(Debug, Default)]
pub struct Applications {
    apps: Mutex<BTreeMap<Uuid, Application>>,
}

impl Applications {
    /// Records that `master` obtained keys shared with `slaves`; the application when it is
    /// new.
    pub fn note(&self, domain: &str, master: &str, slaves: &[String]) -> Option<Application> {
        let id = crate::etsi015::app_id(domain, master, &slaves.join(","));
        let mut apps = self.apps.lock().expect("applications");
        if apps.contains_key(&id) {
            return None;
        }
        let app = Application {
            id,
            master: master.to_owned(),
            slaves: slaves.to_vec(),
            created: crate::netconf::server::now_rfc3339(),
        };
        apps.insert(id, app.clone());
        Some(app)
    }

    /// Removes the applications whose master SAE `keep` rejects; returns them.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Vec<Application> {
        let mut apps = self.apps.lock().expect("applications");
        let gone: Vec<Uuid> = apps
            .values()
            .filter(|a| !keep(&a.master))
            .map(|a| a.id)
            .collect();
        gone.iter().filter_map(|id| apps.remove(id)).collect()
    }

    /// Every application, by identifier.
    pub fn list(&self) -> Vec<Application> {
        self.apps
            .lock()
            .expect("applications")
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_application_is_new_once_and_leaves_with_its_master() {
        let apps = Applications::default();
        let slaves = vec!["s2".to_owned()];
        let first = apps.note("A", "s1", &slaves).expect("new");
        assert_eq!(first.id, crate::etsi015::app_id("A", "s1", "s2"));
        assert!(apps.note("A", "s1", &slaves).is_none());
        assert!(apps.note("A", "s3", &slaves).is_some());
        let gone = apps.retain(|master| master != "s1");
        assert_eq!(gone, vec![first]);
        assert_eq!(apps.list().len(), 1);
    }
}
