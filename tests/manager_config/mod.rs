//! Configuration management through the QKDN manager (Y.3818 clause 7): an operator
//! configures the domain's interworking on the manager over NETCONF, the manager provisions
//! its controller over NETCONF, the controller acts on it at once (Cxi), a refused change
//! changes nothing anywhere, and both record who made the change.

use std::sync::Arc;
use std::time::Duration;

use qkdni::netconf::client::{ClientError, NetconfClient};
use qkdni::testbed::endpoints::NetconfLogin;

use crate::common::{eventually, Bed};

const TOPOLOGY: &str = "two-domain-gwn.toml";
const MANAGER_NS: &str = "urn:qkdni:yang:qkdni-manager";
const CONTROLLER_NS: &str = "urn:qkdni:yang:qkdni-controller";

fn login(bed: &Bed, domain: &str) -> NetconfLogin {
    bed.endpoints.domains[domain].netconf_user.clone().unwrap()
}

/// A NETCONF session to `domain`'s manager as its operator.
async fn manager(bed: &Bed, domain: &str) -> Arc<NetconfClient> {
    let address = bed.endpoints.domains[domain]
        .manager
        .as_ref()
        .and_then(|m| m.netconf.clone())
        .expect("the manager serves NETCONF");
    NetconfClient::connect(
        address.parse().unwrap(),
        bed.endpoints.netconf_options(&login(bed, domain)),
    )
    .await
    .unwrap()
}

fn peer_b(inner: &str) -> String {
    format!(
        "<manager xmlns=\"{MANAGER_NS}\"><interworking><peer-domain><name>B</name>{inner}</peer-domain></interworking></manager>"
    )
}

/// Edits the candidate and commits it; the commit's error, if any.
async fn commit(session: &NetconfClient, config: &str) -> Result<(), ClientError> {
    session.edit_config("candidate", config).await?;
    match session.commit().await {
        Ok(()) => Ok(()),
        Err(error) => {
            session.discard_changes().await.unwrap();
            Err(error)
        }
    }
}

async fn controller_config(bed: &Bed, domain: &str) -> String {
    let session = bed.controller_netconf(domain, &login(bed, domain)).await;
    let filter = format!("<controller xmlns=\"{CONTROLLER_NS}\"><interworking/></controller>");
    session.get_config("running", Some(&filter)).await.unwrap()
}

/// Controller `domain`'s state of its interworking subtree.
async fn controller_state(bed: &Bed, domain: &str) -> String {
    let session = bed.controller_netconf(domain, &login(bed, domain)).await;
    let filter = format!("<controller xmlns=\"{CONTROLLER_NS}\"><interworking/></controller>");
    session.get(Some(&filter)).await.unwrap()
}

/// Waits (up to 30 s) until `check` holds of controller `domain`'s interworking state.
async fn wait_state(bed: &Bed, domain: &str, what: &str, check: impl Fn(&str) -> bool) {
    eventually(
        &format!("{what}: controller {domain}"),
        Duration::from_millis(200),
        || async {
            let state = controller_state(bed, domain).await;
            if check(&state) {
                Ok(())
            } else {
                Err(state)
            }
        },
    )
    .await
}

/// One key from `master` to `slave` across the domains, retried while the links fill
/// (up to 60 s).
async fn deliver_when_ready(bed: &Bed, master: &str, slave: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let request = qkdni::etsi014::KeyRequest {
        number: Some(1),
        size: Some(256),
        ..Default::default()
    };
    loop {
        match bed.client(master).enc_keys(slave, &request).await {
            Ok(keys) => {
                let ids = vec![keys.keys[0].key_ID.clone()];
                let fetched = bed.client(slave).dec_keys(master, &ids).await.unwrap();
                assert_eq!(fetched.keys[0].key, keys.keys[0].key);
                return;
            }
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{master} -> {slave}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Whether controller `caller`'s certificate is let into `callee`'s Cxi server.
async fn cxi_admits(bed: &Bed, caller: &str, callee: &str) -> bool {
    let config = qkdni::control::config::ControllerConfig::load(
        &bed.endpoints.controller(caller).unwrap().config,
    )
    .unwrap();
    let http =
        qkdni::tls::https_client_to_peer(&config.tls, callee, Duration::from_secs(10)).unwrap();
    let cxi = bed
        .endpoints
        .controller(callee)
        .unwrap()
        .cxi
        .clone()
        .unwrap();
    let response = http
        .get(format!("{cxi}/cxi/v1/abstract-topology"))
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        200 => true,
        403 => false,
        other => panic!("Cxi answered {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_configure_interworking_through_the_manager() {
    let bed = Bed::up(TOPOLOGY);
    let operator = login(&bed, "A").username;
    let session = manager(&bed, "A").await;

    // at its first start the manager adopted its controller's configuration
    let running = session
        .get_config(
            "running",
            Some(&format!("<manager xmlns=\"{MANAGER_NS}\"/>")),
        )
        .await
        .unwrap();
    assert!(running.contains("<name>B</name>"), "{running}");
    let b_cxi = bed.endpoints.controller("B").unwrap().cxi.clone().unwrap();
    assert!(running.contains(&b_cxi), "{running}");
    deliver_when_ready(&bed, "sae-b1-1", "sae-a1-1").await;

    // A stops exposing its SAEs to B: B's controller no longer sees them, and B's
    // applications cannot reach A's
    commit(
        &session,
        &peer_b("<expose><saes>false</saes></expose><qos-class>gold</qos-class>"),
    )
    .await
    .unwrap();
    let config = controller_config(&bed, "A").await;
    assert!(config.contains("<saes>false</saes>"), "{config}");
    assert!(config.contains("<qos-class>gold</qos-class>"), "{config}");
    assert!(
        config.contains(&format!("<operator>{operator}</operator>")),
        "{config}"
    );
    let state = controller_state(&bed, "A").await;
    assert!(state.contains("<user>manager-A</user>"), "{state}");
    assert!(
        state.contains(&format!("<operator>{operator}</operator>")),
        "{state}"
    );
    wait_state(&bed, "B", "A's SAEs hidden from B", |s| {
        !s.contains("sae-a4-1")
    })
    .await;
    let request = qkdni::etsi014::KeyRequest {
        number: Some(1),
        size: Some(256),
        ..Default::default()
    };
    // (a pair with no session yet: sessions agreed before keep their route)
    assert!(
        bed.client("sae-b1-2")
            .enc_keys("sae-a4-1", &request)
            .await
            .is_err(),
        "an SAE that A no longer exposes is out of B's reach"
    );

    // exposed again: reachable again
    commit(&session, &peer_b("<expose><saes>true</saes></expose>"))
        .await
        .unwrap();
    wait_state(&bed, "B", "A's SAEs shown to B again", |s| {
        s.contains("sae-a4-1")
    })
    .await;
    deliver_when_ready(&bed, "sae-b1-2", "sae-a4-1").await;

    // invalid edits: an rpc-error, nothing changed on either
    let before_manager = session.get_config("running", None).await.unwrap();
    let before_controller = controller_config(&bed, "A").await;
    // a domain whose CA controller A does not trust: the controller refuses the push
    let unknown = format!(
        "<manager xmlns=\"{MANAGER_NS}\"><interworking><peer-domain><name>Z</name>\
         <cxi-url>https://127.0.0.1:1</cxi-url><controller>controller-Z</controller>\
         </peer-domain></interworking></manager>"
    );
    match commit(&session, &unknown).await {
        Err(ClientError::Rpc(errors)) => {
            assert!(errors[0].message.contains("refused"), "{errors:?}")
        }
        other => panic!("expected an rpc-error, got {other:?}"),
    }
    // out of the schema's range: refused by the manager itself
    let zero = format!(
        "<manager xmlns=\"{MANAGER_NS}\"><reports><mxi-report-seconds>0</mxi-report-seconds></reports></manager>"
    );
    assert!(matches!(
        session.edit_config("running", &zero).await,
        Err(ClientError::Rpc(_))
    ));
    assert_eq!(
        session.get_config("running", None).await.unwrap(),
        before_manager
    );
    assert_eq!(controller_config(&bed, "A").await, before_controller);

    // B removed as a peer of A: B's controller is refused at A's Cxi from then on
    assert!(cxi_admits(&bed, "B", "A").await);
    let remove = format!(
        "<manager xmlns=\"{MANAGER_NS}\" xmlns:nc=\"urn:ietf:params:xml:ns:netconf:base:1.0\">\
         <interworking><peer-domain nc:operation=\"delete\"><name>B</name></peer-domain>\
         </interworking></manager>"
    );
    session.edit_config("running", &remove).await.unwrap();
    assert!(!controller_config(&bed, "A")
        .await
        .contains("<domain>B</domain>"));
    assert!(!cxi_admits(&bed, "B", "A").await);

    // the change log names the operator, with each diff
    let state = session
        .get(Some(&format!(
            "<manager xmlns=\"{MANAGER_NS}\"><changes/></manager>"
        )))
        .await
        .unwrap();
    assert_eq!(state.matches("<change>").count(), 3, "{state}");
    assert_eq!(
        state.matches(&format!("<user>{operator}</user>")).count(),
        3,
        "{state}"
    );
    assert!(state.contains("expose/saes = false"), "{state}");
    assert!(state.contains("<provisioned>true</provisioned>"), "{state}");
    // the manager's datastore survives on disk (running.xml)
    let manager_dir = bed.endpoints.domains["A"]
        .manager
        .as_ref()
        .unwrap()
        .config
        .clone();
    let persisted = std::fs::read_to_string(manager_dir.with_file_name("running.xml")).unwrap();
    assert!(!persisted.contains("<name>B</name>"), "{persisted}");
}

#[test]
fn ncclient_configures_interworking_through_the_manager() {
    let Some(python) = crate::common::interop_python("ncclient") else {
        return;
    };
    let bed = Bed::up(TOPOLOGY);
    let summary = crate::common::interop_script(
        &python,
        "manager_ncclient.py",
        &[std::ffi::OsStr::new(bed.dir())],
    );
    assert_eq!(summary["controller_provisioned"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_edited_behind_its_managers_back_is_reported_as_drift() {
    let bed = Bed::up(TOPOLOGY);
    let session = manager(&bed, "A").await;
    let manager_tree = format!("<manager xmlns=\"{MANAGER_NS}\"/>");
    let running = session
        .get_config("running", Some(&manager_tree))
        .await
        .unwrap();
    assert!(running.contains("<name>B</name>"), "{running}");
    // someone edits the controller directly: a class the manager does not give B
    bed.controller_netconf("A", &login(&bed, "A"))
        .await
        .edit_config(
            "running",
            &format!(
                "<controller xmlns=\"{CONTROLLER_NS}\"><interworking><peer><domain>B</domain>\
                 <qos-class>rogue</qos-class></peer></interworking></controller>"
            ),
        )
        .await
        .unwrap();
    // the manager finds the drift: state and an event, its own configuration unchanged
    let provisioning = format!("<manager xmlns=\"{MANAGER_NS}\"><provisioning/></manager>");
    let state = eventually(
        "drift in the manager's state",
        Duration::from_millis(250),
        || async {
            let state = session.get(Some(&provisioning)).await.unwrap();
            if state.contains("<drift>") {
                Ok(state)
            } else {
                Err(state)
            }
        },
    )
    .await;
    assert!(state.contains("rogue"), "{state}");
    let events = || async {
        let events = bed.manager_get("A", "/api/v1/events").await;
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "configuration-drift")
            .map(|e| e["detail"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let drifts = events().await;
    assert_eq!(drifts.len(), 1, "{drifts:?}");
    assert!(drifts[0].contains("rogue"), "{drifts:?}");
    assert_eq!(
        session
            .get_config("running", Some(&manager_tree))
            .await
            .unwrap(),
        running
    );
    // the operator's next interworking commit provisions the whole configuration again
    commit(&session, &peer_b("<qos-class>gold</qos-class>"))
        .await
        .unwrap();
    let config = controller_config(&bed, "A").await;
    assert!(
        !config.contains("rogue") && config.contains("gold"),
        "{config}"
    );
    eventually("in sync again", Duration::from_millis(250), || async {
        let drifts = events().await;
        let state = session.get(Some(&provisioning)).await.unwrap();
        if drifts.len() == 2 && !state.contains("<drift>") {
            Ok(())
        } else {
            Err((drifts, state))
        }
    })
    .await;
}
