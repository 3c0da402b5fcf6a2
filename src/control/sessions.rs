//! Key supply sessions: a demand between two SAEs, its route and its history, kept in the
//! controller's durable store (redb) so that a restarted controller resumes them.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const SESSIONS: TableDefinition<u128, &str> = TableDefinition::new("sessions");

/// Fraction by which a link's key rate must fall below a session's demand before the session
/// is rerouted for it, and by which a new plan must beat the current one to replace it.
pub const RATE_HYSTERESIS: f64 = 0.1;

/// State of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// Its route is installed on every KM of the path.
    Active,
    /// No route can serve it now; the controller retries on every topology change.
    Unroutable,
}

/// One entry of a session's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionEvent {
    /// RFC 3339 time.
    pub time: String,
    pub what: String,
}

/// A key supply session between a master SAE and a slave SAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub master_sae: String,
    pub slave_sae: String,
    /// KM of the master SAE.
    pub src: String,
    /// KM of the slave SAE.
    pub dst: String,
    /// Key rate wanted (bit/s).
    pub rate_bps: f64,
    pub state: SessionState,
    /// The relay path (node ids), when routed.
    pub path: Vec<String>,
    /// The QKD links of the path.
    pub links: Vec<String>,
    /// Every path of the session's route plan with its share of the rate (several with the
    /// multipath policy; `path` is the widest).
    #[serde(default)]
    pub paths: Vec<SessionPath>,
    pub history: Vec<SessionEvent>,
    /// Set for a session between SAEs of two QKDNs (Y.3818 9.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interworking: Option<Interworking>,
    /// Set up on a KM's request (keys on demand, no demanded rate): removed once its pair
    /// has not asked for keys for the controller's on-demand idle time.
    #[serde(default)]
    pub on_demand: bool,
}

/// This domain's part in an interworking session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InterworkingRole {
    /// The master SAE is here: this controller coordinates, `path` runs from the master's KM
    /// to the peer GWN across the Qx link.
    Origin,
    /// The slave SAE is here: `path` is the segment from the entry GWN to the slave's KM.
    Segment,
}

/// How an interworking session crosses the border.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Interworking {
    pub peer_domain: String,
    pub role: InterworkingRole,
    /// The Cxi transaction that installed the current route.
    pub transaction: Uuid,
    /// This domain's GWN on the route.
    pub local_gateway: String,
    /// The peer domain's GWN on the route.
    pub peer_gateway: String,
    /// The Qx link between them.
    pub qx_link: String,
    /// The KM of the SAE in the peer domain (the slave's for an origin, the master's for a
    /// segment).
    pub peer_km: String,
}

/// One path of a session's route plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionPath {
    pub nodes: Vec<String>,
    pub links: Vec<String>,
    /// Share of the session's key rate on this path (bit/s).
    pub share_bps: f64,
}

impl Session {
    /// The paths keys travel: the plan's paths, or the single `path`.
    pub fn routed_paths(&self) -> Vec<SessionPath> {
        if self.paths.is_empty() {
            vec![SessionPath {
                nodes: self.path.clone(),
                links: self.links.clone(),
                share_bps: self.rate_bps,
            }]
        } else {
            self.paths.clone()
        }
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The durable session store.
pub struct SessionStore {
    db: Database,
}

impl SessionStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(SESSIONS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// Saves (inserts or replaces) a session.
    pub fn save(&self, session: &Session) -> Result<(), StoreError> {
        let json = serde_json::to_string(session).map_err(err)?;
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(SESSIONS)
            .map_err(err)?
            .insert(session.id.as_u128(), json.as_str())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Deletes a session.
    pub fn delete(&self, id: Uuid) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(SESSIONS)
            .map_err(err)?
            .remove(id.as_u128())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Every session.
    pub fn all(&self) -> Result<Vec<Session>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(SESSIONS).map_err(err)?;
        let mut sessions = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (_, value) = entry.map_err(err)?;
            sessions.push(serde_json::from_str(value.value()).map_err(err)?);
        }
        Ok(sessions)
    }
}
