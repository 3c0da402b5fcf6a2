//! NETCONF integration tests over real KM processes: our client against our server, and
//! third-party clients (ncclient, netconf-console2, netconf-rs) against our server.

mod common;

use std::time::Duration;

use common::Bed;
use qkdni::netconf::client::ClientError;
use qkdni::netconf::ErrorTag;

const TOPOLOGY: &str = "single-domain.toml";
const NODE_NS: &str = "urn:etsi:qkd:yang:etsi-qkd-node";
const KM_NS: &str = "urn:qkdni:yang:qkdni-km";

fn rpc_error(result: Result<impl std::fmt::Debug, ClientError>) -> qkdni::netconf::RpcError {
    match result {
        Err(ClientError::Rpc(mut errors)) => errors.remove(0),
        other => panic!("expected an rpc-error, got {other:?}"),
    }
}

fn route(dest: &str, hop: &str) -> String {
    format!(
        "<qkd_node xmlns=\"{NODE_NS}\"><key-manager xmlns=\"{KM_NS}\"><relay-routes><route><destination>{dest}</destination><next-hop>{hop}</next-hop></route></relay-routes></key-manager></qkd_node>"
    )
}

const ROUTES_FILTER: &str = "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><key-manager xmlns=\"urn:qkdni:yang:qkdni-km\"><relay-routes/></key-manager></qkd_node>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_and_state_through_netconf() {
    let bed = Bed::up(TOPOLOGY);
    let nc = bed.netconf("a1").await;
    assert!(nc
        .capabilities
        .iter()
        .any(|c| c == "urn:ietf:params:netconf:base:1.1"));
    assert!(nc
        .capabilities
        .iter()
        .any(|c| c.contains("module=qkdni-km")));

    // running config holds the agent's links and routes; state adds pools and rates
    let config = nc.get_config("running", None).await.unwrap();
    assert!(config.contains("<qkdl_id>a1-a2</qkdl_id>"), "{config}");
    assert!(
        !config.contains("own-blocks"),
        "state leaked into get-config"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let state = nc
        .get(Some(&format!("<qkd_node xmlns=\"{NODE_NS}\"><qkd_links><qkd_link><qkdl_id>a1-a2</qkdl_id><key-pool xmlns=\"{KM_NS}\"/><oper-state xmlns=\"{KM_NS}\"/></qkd_link></qkd_links></qkd_node>")))
        .await
        .unwrap();
    assert!(state.contains(">up</oper-state>"), "{state}");
    assert!(state.contains("<own-blocks>"), "{state}");
    assert!(
        !state.contains("a2-a3"),
        "filter let another link through: {state}"
    );

    // a valid route change takes effect without restart
    nc.edit_config("running", &route("z1", "a2")).await.unwrap();
    let routes = nc.get_config("running", Some(ROUTES_FILTER)).await.unwrap();
    assert!(routes.contains("<destination>z1</destination>"), "{routes}");

    // an invalid one (next hop is not a link peer) is refused whole, with an error path
    let before = nc.get_config("running", None).await.unwrap();
    let error = rpc_error(nc.edit_config("running", &route("z2", "a5")).await);
    assert!(
        error.path.is_some() || !error.message.is_empty(),
        "{error:?}"
    );
    let error = rpc_error(
        nc.edit_config(
            "running",
            &format!("<qkd_node xmlns=\"{NODE_NS}\"><key-manager xmlns=\"{KM_NS}\"><etsi014><key-size>100</key-size></etsi014></key-manager></qkd_node>"),
        )
        .await,
    );
    assert_eq!(error.tag, ErrorTag::InvalidValue, "{error:?}");
    let error = rpc_error(
        nc.edit_config("running", "<bogus xmlns=\"urn:nowhere\"/>")
            .await,
    );
    assert_eq!(error.tag, ErrorTag::UnknownNamespace);
    assert_eq!(nc.get_config("running", None).await.unwrap(), before);

    // xpath filter
    let reply = nc
        .rpc(&format!("<get-config><source><running/></source><filter type=\"xpath\" xmlns:n=\"{NODE_NS}\" select=\"/n:qkd_node/n:qkdn_id\"/></get-config>"))
        .await
        .unwrap();
    assert!(
        reply.contains("<qkdn_id>a1</qkdn_id>") && !reply.contains("qkd_links"),
        "{reply}"
    );

    // unknown operations and datastores are rpc-errors, the session goes on
    assert_eq!(
        rpc_error(nc.rpc("<frobnicate/>").await).tag,
        ErrorTag::OperationNotSupported
    );
    assert_eq!(
        rpc_error(
            nc.rpc("<get-config><source><startup/></source></get-config>")
                .await
        )
        .tag,
        ErrorTag::InvalidValue
    );
    nc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidate_commit_confirmed_commit_and_locks() {
    let bed = Bed::up(TOPOLOGY);
    let one = bed.netconf("a1").await;
    let two = bed.netconf("a1").await;

    // candidate edits are invisible in running until commit; discard drops them
    one.edit_config("candidate", &route("z3", "a2"))
        .await
        .unwrap();
    assert!(!one
        .get_config("running", Some(ROUTES_FILTER))
        .await
        .unwrap()
        .contains(">z3<"));
    one.discard_changes().await.unwrap();
    assert!(!one
        .get_config("candidate", Some(ROUTES_FILTER))
        .await
        .unwrap()
        .contains(">z3<"));
    one.edit_config("candidate", &route("z3", "a2"))
        .await
        .unwrap();
    one.commit().await.unwrap();
    assert!(one
        .get_config("running", Some(ROUTES_FILTER))
        .await
        .unwrap()
        .contains(">z3<"));

    // lock contention: the second session is refused with the holder's session id
    one.lock("running").await.unwrap();
    let error = rpc_error(two.lock("running").await);
    assert_eq!(error.tag, ErrorTag::LockDenied);
    assert!(
        error
            .info
            .iter()
            .any(|(k, v)| k == "session-id" && *v == one.session_id.to_string()),
        "{error:?}"
    );
    let error = rpc_error(two.edit_config("running", &route("z4", "a2")).await);
    assert_eq!(error.tag, ErrorTag::InUse);
    one.unlock("running").await.unwrap();
    two.lock("running").await.unwrap();
    two.unlock("running").await.unwrap();

    // confirmed commit not confirmed in time: rolled back
    two.edit_config("candidate", &route("z4", "a2"))
        .await
        .unwrap();
    two.rpc("<commit><confirmed/><confirm-timeout>2</confirm-timeout></commit>")
        .await
        .unwrap();
    assert!(two
        .get_config("running", Some(ROUTES_FILTER))
        .await
        .unwrap()
        .contains(">z4<"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!two
        .get_config("running", Some(ROUTES_FILTER))
        .await
        .unwrap()
        .contains(">z4<"));
    // confirmed, then confirmed again: kept
    two.edit_config("candidate", &route("z4", "a2"))
        .await
        .unwrap();
    two.rpc("<commit><confirmed/><confirm-timeout>2</confirm-timeout></commit>")
        .await
        .unwrap();
    two.commit().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(two
        .get_config("running", Some(ROUTES_FILTER))
        .await
        .unwrap()
        .contains(">z4<"));

    // the running datastore survives a restart of the agent
    bed.cli(&["node", "stop", "a1"]);
    bed.cli(&["node", "start", "a1"]);
    let three = bed.netconf("a1").await;
    let routes = three
        .get_config("running", Some(ROUTES_FILTER))
        .await
        .unwrap();
    assert!(
        routes.contains(">z4<") && routes.contains(">z3<"),
        "{routes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_users_cannot_write_and_notifications_arrive() {
    let bed = Bed::up(TOPOLOGY);
    let viewer = bed
        .netconf_as("a2", &bed.endpoints.netconf_readonly_user, false)
        .await
        .unwrap();
    viewer.get_config("running", None).await.unwrap();
    let error = rpc_error(viewer.edit_config("running", &route("a5", "a4")).await);
    assert_eq!(error.tag, ErrorTag::AccessDenied);
    assert_eq!(
        rpc_error(viewer.lock("running").await).tag,
        ErrorTag::AccessDenied
    );
    let wrong = qkdni::testbed::endpoints::NetconfLogin {
        username: "operator".into(),
        password: "wrong".into(),
    };
    assert!(matches!(
        bed.netconf_as("a2", &wrong, false).await,
        Err(ClientError::AuthRefused(_))
    ));

    // base:1.0 framing works too
    let old = bed
        .netconf_as("a2", &bed.endpoints.netconf_user, true)
        .await
        .unwrap();
    old.get_config("running", None).await.unwrap();

    // link down -> link-status-change notification
    let mut notifications = viewer.subscribe().await.unwrap();
    bed.cli(&["link", "down", "a1-a2"]);
    let message = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = notifications.recv().await.unwrap();
            if n.contains("link-status-change") {
                return n;
            }
        }
    })
    .await
    .expect("no notification within 10 s");
    assert!(
        message.contains("<link-id>a1-a2</link-id>")
            && message.contains("<oper-state>down</oper-state>"),
        "{message}"
    );
    assert!(message.contains("<eventTime>"), "{message}");
}
