//! Two managers (domains A and B, each with its own CA trusting the other's) talking over
//! Mxi in one process, with clients that must be refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;

use super::config::{ControllerLink, ManagerConfig, PeerManager};
use super::events::{self, ManagerEvent};
use super::kmlm::RelayFailure;
use super::mxi::messages::{self, FaultReport, ReportPack};
use super::Manager;
use crate::control::config::SouthboundLogin;
use crate::pki::{Authority, Role};
use crate::problem::{Problem, PROBLEM_JSON};
use crate::tls::{PeerCa, TlsFiles};

struct Domain {
    name: String,
    ca: PathBuf,
    authority: Authority,
}

fn domain(dir: &Path, name: &str) -> Domain {
    let authority = Authority::new(name).unwrap();
    let ca = dir.join(format!("{name}-ca.crt"));
    std::fs::write(&ca, authority.cert_pem()).unwrap();
    Domain {
        name: name.into(),
        ca,
        authority,
    }
}

/// TLS files of a party named `name` certified by `own`, trusting `own` and `peer`.
fn tls(dir: &Path, own: &Domain, name: &str, peer: Option<(&str, &Domain)>) -> TlsFiles {
    let issued = own
        .authority
        .issue_to(dir, &format!("{}-{name}", own.name), name, Role::Node)
        .unwrap();
    TlsFiles {
        cert: issued.cert,
        key: issued.key,
        ca: vec![own.ca.clone()],
        peer_cas: peer
            .map(|(domain, d)| PeerCa {
                domain: domain.into(),
                cert: d.ca.clone(),
            })
            .into_iter()
            .collect(),
    }
}

fn config(
    name: &str,
    peer: &str,
    tls: TlsFiles,
    mxi: &TcpListener,
    peer_mxi: &TcpListener,
) -> ManagerConfig {
    let lower = name.to_ascii_lowercase();
    // a controller that is not there: the QCLM must log its failure, nothing more
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let controller = format!("https://{}", nobody.local_addr().unwrap());
    drop(nobody);
    // no agents: an empty known hosts file
    let known_hosts = tls.ca[0].with_file_name(format!("known_hosts-{name}"));
    std::fs::write(&known_hosts, "").unwrap();
    ManagerConfig {
        domain: name.into(),
        nodes: vec![
            format!("{lower}1"),
            format!("{lower}2"),
            format!("g{lower}1"),
        ],
        rest_listen: "127.0.0.1:0".parse().unwrap(),
        mxi_listen: mxi.local_addr().unwrap(),
        bearer_tokens: vec![format!("token-{name}")],
        report_seconds: 5,
        diagnosis_holddown_seconds: 5,
        netconf: None,
        controller: Some(ControllerLink {
            url: controller,
            token: "t".into(),
            ca: tls.ca[0].clone(),
            speaker: false,
            netconf: None,
        }),
        tls,
        agents: Vec::new(),
        southbound: SouthboundLogin {
            username: "operator".into(),
            password: "unused".into(),
            known_hosts,
        },
        peer: PeerManager {
            domain: peer.into(),
            manager_name: format!("manager-{peer}"),
            mxi: format!("https://{}", peer_mxi.local_addr().unwrap()),
        },
        limits: Default::default(),
        metrics_listen: None,
        refusals: Default::default(),
        nonrepudiation: Default::default(),
        audit: Default::default(),
    }
}

async fn wait_for(manager: &Manager, kind: &str, count: usize) -> Vec<ManagerEvent> {
    for _ in 0..100 {
        let found = manager.events.of_kind(kind);
        if found.len() >= count {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no {kind} event in domain {}: {:#?}",
        manager.config.domain,
        manager.events.all()
    );
}

fn client(files: &TlsFiles) -> reqwest::Client {
    crate::tls::https_client(files, Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn fault_reports_and_report_packs_cross_mxi_and_strangers_are_refused() {
    let dir = std::env::temp_dir().join(format!("qkdni-management-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, c) = (domain(&dir, "A"), domain(&dir, "B"), domain(&dir, "C"));
    let (mxi_a, mxi_b) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let tls_a = tls(&dir, &a, "manager-A", Some(("B", &b)));
    let tls_b = tls(&dir, &b, "manager-B", Some(("A", &a)));
    let manager_a = Manager::new(config("A", "B", tls_a.clone(), &mxi_a, &mxi_b)).unwrap();
    let manager_b = Manager::new(config("B", "A", tls_b, &mxi_b, &mxi_a)).unwrap();
    let url_b = manager_a.config.peer.mxi.clone();
    let rest_a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rest_url = format!("https://{}", rest_a.local_addr().unwrap());
    let servers = [
        tokio::spawn(super::mxi::serve(manager_a.clone(), mxi_a)),
        tokio::spawn(super::mxi::serve(manager_b.clone(), mxi_b)),
        tokio::spawn(super::rest::serve(manager_a.clone(), rest_a)),
    ];

    // the peer's versions
    let versions = manager_a.xlmo.mxi().versions().await.unwrap();
    assert_eq!(versions.versions, vec![1]);

    // an interworking relay failure seen by KM ga1 of A: to B's XLMO and both QCLMs
    let relay_id = uuid::Uuid::new_v4();
    let failure = RelayFailure {
        node: "ga1".into(),
        relay_id: Some(relay_id),
        destination: "b2".into(),
        reason: "next hop gb1 unreachable".into(),
        exhausted: false,
    };
    manager_a
        .xlmo
        .local_fault(&manager_a, failure.clone())
        .await;
    let sent = wait_for(&manager_a, events::XLMO_FAULT_SENT, 1).await;
    let received = wait_for(&manager_b, events::XLMO_FAULT_RECEIVED, 1).await;
    assert_eq!(received[0].relay_id, Some(relay_id));
    assert_eq!(received[0].message, sent[0].message);
    for manager in [&manager_a, &manager_b] {
        wait_for(manager, events::QCLM_DIAGNOSIS, 1).await;
        let decision = wait_for(manager, events::QCLM_DECISION, 1).await;
        assert!(
            decision[0].detail.contains("could not ask the controller"),
            "{decision:?}"
        );
    }
    // a local relay failure stays in A
    let local = RelayFailure {
        destination: "a2".into(),
        ..failure
    };
    manager_a.xlmo.local_fault(&manager_a, local).await;
    assert_eq!(manager_a.events.of_kind(events::XLMO_FAULT_SENT).len(), 1);

    // a report pack from A to B
    let pack = manager_a.xlmo.send_reports(&manager_a).await.unwrap();
    // the controller is not there: a pack without control-layer figures, not no pack
    assert!(pack.performance.control_layer.is_none());
    wait_for(&manager_b, events::XLMO_REPORTS_RECEIVED, 1).await;
    assert_eq!(manager_b.xlmo.latest().received, Some(pack.clone()));
    assert_eq!(manager_a.xlmo.latest().sent, Some(pack));

    // a fault report of an unknown version from the right peer: 400
    // (signed by A's manager, as every Mxi message must be: the checks after the signature's)
    let peer_a = crate::tls::https_client_to_peer(&tls_a, "B", Duration::from_secs(5)).unwrap();
    let signer_a = crate::nonrepudiation::Signer::of(&tls_a).unwrap();
    let signed_post = |path: &str, body: Vec<u8>| {
        let cose = signer_a.sign(&body, &format!("POST {path}"), None).unwrap();
        peer_a
            .post(format!("{url_b}{path}"))
            .header("content-type", "application/json")
            .header(
                crate::nonrepudiation::http::HEADER,
                base64::Engine::encode(&crate::nonrepudiation::evidence::b64(), cose),
            )
            .body(body)
            .send()
    };
    let mut body = serde_json::to_value(fault_of(&manager_a)).unwrap();
    body["version"] = 2.into();
    let response = signed_post("/mxi/v1/faults", serde_json::to_vec(&body).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.kind, "urn:qkdni:problem:unsupported-version");
    // a report pack claiming to be of another domain: 403
    let mut forged: ReportPack = manager_a.xlmo.pack(&manager_a).await;
    forged.domain = "C".into();
    let response = signed_post("/mxi/v1/reports", serde_json::to_vec(&forged).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // the same unsigned: 401
    let response = peer_a
        .post(format!("{url_b}/mxi/v1/reports"))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // strangers: a third CA's certificate fails the handshake or gets 403
    let outsider = tls(&dir, &c, "manager-A", None);
    let outsider = TlsFiles {
        ca: vec![b.ca.clone()],
        ..outsider
    };
    let attempt = client(&outsider)
        .post(format!("{url_b}/mxi/v1/faults"))
        .json(&fault_of(&manager_a))
        .send()
        .await;
    assert!(attempt.is_err() || attempt.unwrap().status() == 403);
    // B's own CA with the peer manager's name, A's CA with a wrong name, no certificate
    let strangers = [
        tls(&dir, &b, "manager-A", None),
        tls(&dir, &a, "km-a1", None),
        tls(&dir, &a, "manager-B", None),
    ];
    let rejected_before = manager_b.events.of_kind(events::MXI_REJECTED).len();
    for files in &strangers {
        let files = TlsFiles {
            ca: vec![b.ca.clone()],
            ..files.clone()
        };
        let response = client(&files)
            .post(format!("{url_b}/mxi/v1/faults"))
            .json(&fault_of(&manager_a))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
        assert_eq!(response.headers()["content-type"], PROBLEM_JSON);
        let problem: Problem = response.json().await.unwrap();
        assert_eq!(problem.status, 403);
    }
    let anonymous =
        crate::tls::https_client_trusting(std::slice::from_ref(&b.ca), Duration::from_secs(5))
            .unwrap()
            .get(format!("{url_b}/mxi/v1/versions"))
            .send()
            .await
            .unwrap();
    assert_eq!(anonymous.status(), 403);
    let rejected = manager_b.events.of_kind(events::MXI_REJECTED);
    assert_eq!(rejected.len(), rejected_before + strangers.len() + 1);
    assert!(rejected
        .last()
        .unwrap()
        .detail
        .contains("without certificate"));
    let security = manager_b.security.report();
    // the unknown version and the unsigned report pack
    assert_eq!(security.mxi_malformed, 2);
    assert_eq!(security.mxi_rejected, 1 + strangers.len() as u64 + 1);
    // none of those reached B's XLMO
    assert_eq!(
        manager_b.events.of_kind(events::XLMO_FAULT_RECEIVED).len(),
        1
    );

    // A's REST API: health without credentials, events with a token only
    let rest =
        crate::tls::https_client_trusting(std::slice::from_ref(&a.ca), Duration::from_secs(5))
            .unwrap();
    let health: serde_json::Value = rest
        .get(format!("{rest_url}/api/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, serde_json::json!({"ready": true}));
    let denied = rest
        .get(format!("{rest_url}/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let logged: Vec<ManagerEvent> = rest
        .get(format!("{rest_url}/api/v1/events"))
        .bearer_auth("token-A")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(logged.iter().any(|e| e.kind == events::XLMO_FAULT_SENT));
    let latest: serde_json::Value = rest
        .get(format!("{rest_url}/api/v1/reports/latest"))
        .bearer_auth("token-A")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(latest["sent"]["kind"], "report-pack");
    assert_eq!(manager_a.security.report().rest_authentication_failures, 1);

    for server in servers {
        server.abort();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fault report of `manager`'s domain.
fn fault_of(manager: &Manager) -> FaultReport {
    let mut report = messages::tests::fault();
    report.domain = manager.config.domain.clone();
    report
}
