//! New sessions: one inside the domain is routed at once and installed; one toward an SAE
//! of a peer domain (procedure 1) is first agreed with the peer controller in a task. Requests
//! for a pair whose session is being agreed wait for the same session.

use uuid::Uuid;

use super::error::{answer_all, ControlError, Reply};
use super::instance::Instance;
use super::messages::Agreement;
use super::messages::Job;
use super::reroute::describe;
use super::sessions::{Interworking, Session, SessionEvent, SessionPath, SessionState};
use crate::netconf::server::now_rfc3339;

/// Who asks for a new session.
pub(super) enum Requester {
    /// An orchestrator, over the northbound REST API (with a demanded rate).
    Orchestrator,
    /// A KM, for keys on demand: the session is removed when it is no longer used.
    Km(String),
}

impl Requester {
    fn on_demand(&self) -> bool {
        matches!(self, Requester::Km(_))
    }
}

impl std::fmt::Display for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requester::Orchestrator => f.write_str("orchestrator"),
            Requester::Km(km) => write!(f, "KM {km}"),
        }
    }
}

impl Instance {
    /// An orchestrator's new session.
    pub(super) fn create(
        &mut self,
        master: String,
        slave: String,
        rate_bps: f64,
        reply: Reply<Session>,
    ) {
        let topology = &self.state.topology;
        if !topology.saes.contains_key(&master) {
            let _ = reply.send(Err(ControlError::UnknownSae(master)));
            return;
        }
        if topology.saes.contains_key(&slave) {
            self.create_local(master, slave, rate_bps, &Requester::Orchestrator, reply)
        } else if self.c.peers().is_empty() {
            let _ = reply.send(Err(ControlError::UnknownSae(slave)));
        } else {
            self.create_interworking(master, slave, rate_bps, &Requester::Orchestrator, reply)
        }
    }

    /// Routes a new session inside the domain and queues its install.
    fn create_local(
        &mut self,
        master: String,
        slave: String,
        rate_bps: f64,
        by: &Requester,
        reply: Reply<Session>,
    ) {
        let topology = &self.state.topology;
        let (Some(src), Some(dst)) = (
            topology.saes.get(&master).cloned(),
            topology.saes.get(&slave).cloned(),
        ) else {
            self.creating.remove(&(master, slave.clone()));
            let _ = reply.send(Err(ControlError::UnknownSae(slave)));
            return;
        };
        let paths = match self.c.route(topology, &src, &dst, rate_bps) {
            Ok(paths) => paths,
            Err(error) => {
                self.creating.remove(&(master, slave));
                let _ = reply.send(Err(error));
                return;
            }
        };
        let id = Uuid::new_v4();
        // QoS admission: the class's guarantee must fit on every link of the route
        let class = self.c.admission.class_of(&master, &slave, None, |_| true);
        if let Some(class) = class {
            let links = super::admission::links_of(&paths);
            if let Err(refusal) = self.c.admission.admit(id, &class, links, topology) {
                tracing::info!(%master, %slave, %refusal, "session not admitted");
                self.creating.remove(&(master, slave));
                let _ = reply.send(Err(refusal.into()));
                return;
            }
        }
        let session = Session {
            id,
            master_sae: master,
            slave_sae: slave,
            src,
            dst,
            rate_bps,
            state: SessionState::Active,
            history: vec![SessionEvent {
                time: now_rfc3339(),
                what: format!("created by {by} with route {}", describe(&paths)),
            }],
            path: paths[0].nodes.clone(),
            links: paths[0].links.clone(),
            paths,
            interworking: None,
            on_demand: by.on_demand(),
        };
        self.push(Job::Create {
            session,
            peer: None,
            replies: vec![reply],
        });
    }

    /// Procedure 1, asked by a KM: the active interworking session of `master` and `slave`,
    /// created (route agreed and installed) when there is none.
    pub(super) fn km_route(
        &mut self,
        km: String,
        master: String,
        slave: String,
        reply: Reply<Session>,
    ) {
        let topology = &self.state.topology;
        if topology.saes.get(&master) != Some(&km) {
            let _ = reply.send(Err(ControlError::Invalid(format!(
                "SAE {master} is not served by KM {km}"
            ))));
            return;
        }
        if let Some(waiting) = self.creating.get_mut(&(master.clone(), slave.clone())) {
            waiting.push(reply);
            return;
        }
        if let Some(session) = self
            .state
            .sessions
            .values()
            .find(|s| s.master_sae == master && s.slave_sae == slave)
        {
            // one session per pair: an unroutable one is retried by the controller itself
            let answer = match session.state {
                SessionState::Active => Ok(session.clone()),
                SessionState::Unroutable => Err(ControlError::NoRoute(format!(
                    "session {} waits for a route",
                    session.id
                ))),
            };
            self.answer(reply, answer);
            return;
        }
        let by = Requester::Km(km);
        if topology.saes.contains_key(&slave) {
            // keys on demand inside the domain: a best-effort session, routed at once
            self.creating
                .insert((master.clone(), slave.clone()), Vec::new());
            return self.create_local(master, slave, 0.0, &by, reply);
        }
        if self.c.peers().is_empty() {
            let _ = reply.send(Err(ControlError::UnknownSae(slave)));
            return;
        }
        let rate = self
            .c
            .config
            .interworking
            .as_ref()
            .map_or(0.0, |iw| iw.default_rate_bps);
        self.create_interworking(master, slave, rate, &by, reply);
    }

    /// Starts agreeing a new interworking session from `master` (an SAE of this domain) to
    /// `slave` (an SAE of a peer domain); a request for a pair being agreed waits for it.
    fn create_interworking(
        &mut self,
        master: String,
        slave: String,
        rate_bps: f64,
        by: &Requester,
        reply: Reply<Session>,
    ) {
        let key = (master.clone(), slave.clone());
        if let Some(waiting) = self.creating.get_mut(&key) {
            waiting.push(reply);
            return;
        }
        let Some(src) = self.state.topology.saes.get(&master).cloned() else {
            let _ = reply.send(Err(ControlError::UnknownSae(master)));
            return;
        };
        let session = Session {
            id: Uuid::new_v4(),
            master_sae: master,
            slave_sae: slave,
            src,
            dst: String::new(),
            rate_bps,
            state: SessionState::Active,
            path: Vec::new(),
            links: Vec::new(),
            paths: Vec::new(),
            history: Vec::new(),
            interworking: None,
            on_demand: by.on_demand(),
        };
        self.creating.insert(key, vec![reply]);
        self.agree(
            Agreement::New {
                session: session.clone(),
                by: by.to_string(),
            },
            session,
            format!("new session ({by})"),
        );
    }

    /// The outcome of a new session's agreement: installed here (the peer committed its
    /// segment), or every waiter gets the error.
    pub(super) fn agreed_new(
        &mut self,
        mut session: Session,
        by: String,
        result: Result<(Vec<SessionPath>, Interworking), ControlError>,
    ) {
        let (paths, iw) = match result {
            Ok(agreed) => agreed,
            Err(error) => {
                self.c.admission.release(session.id);
                let key = (session.master_sae, session.slave_sae);
                answer_all(self.creating.remove(&key).unwrap_or_default(), error);
                return;
            }
        };
        session.dst = iw.peer_km.clone();
        session.path = paths[0].nodes.clone();
        session.links = paths[0].links.clone();
        session.history.push(SessionEvent {
            time: now_rfc3339(),
            what: format!(
                "created by {by} with route {} (agreed with {} in transaction {})",
                session.path.join(" -> "),
                iw.peer_domain,
                iw.transaction
            ),
        });
        session.paths = paths;
        let peer = Some((iw.peer_domain.clone(), iw.transaction));
        session.interworking = Some(iw);
        // the waiters are answered when the install is done
        self.push(Job::Create {
            session,
            peer,
            replies: Vec::new(),
        });
    }
}
