//! NETCONF integration tests over real KM processes: our client against our server, and
//! third-party clients (ncclient, netconf-console2, netconf-rs) against our server. The
//! testbeds run without a controller, so that operators are the only ones editing, except
//! the one that also attacks the controller's NETCONF port.

mod common;
#[path = "etsi015/mod.rs"]
mod etsi015;
#[path = "manager_config/mod.rs"]
mod manager_config;

use std::time::Duration;

use common::Bed;
use qkdni::netconf::client::ClientError;
use qkdni::netconf::ErrorTag;

const TOPOLOGY: &str = "single-domain.toml";
const NODE_NS: &str = "urn:etsi:qkd:yang:etsi-qkd-node";
const KM_NS: &str = "urn:qkdni:yang:qkdni-km";

/// `qkdn_id` of node `node` of the testbed's domain A (ETSI GS QKD 015: a UUID).
fn node_id(node: &str) -> String {
    qkdni::etsi015::node_id("A", node).to_string()
}

/// `qkdl_id` of link `link` of domain A.
fn link_id(link: &str) -> String {
    qkdni::etsi015::link_id("A", None, link).to_string()
}

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
    let bed = Bed::up_static(TOPOLOGY);
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
    assert!(
        config.contains(&format!("<qkdl_id>{}</qkdl_id>", link_id("a1-a2"))),
        "{config}"
    );
    assert!(config.contains(">a1-a2</link-name>"), "{config}");
    assert!(
        !config.contains("own-blocks"),
        "state leaked into get-config"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let state = nc
        .get(Some(&format!("<qkd_node xmlns=\"{NODE_NS}\"><qkd_links><qkd_link><qkdl_id>{}</qkdl_id><key-pool xmlns=\"{KM_NS}\"/><oper-state xmlns=\"{KM_NS}\"/></qkd_link></qkd_links></qkd_node>", link_id("a1-a2"))))
        .await
        .unwrap();
    assert!(state.contains(">up</oper-state>"), "{state}");
    assert!(state.contains("<own-blocks>"), "{state}");
    assert!(
        !state.contains(&link_id("a2-a3")),
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
    // a must violation: operation-failed (RFC 7950 section 15.4), with the app tag and path
    assert_eq!(error.tag, ErrorTag::OperationFailed, "{error:?}");
    assert_eq!(error.app_tag.as_deref(), Some("must-violation"));
    assert!(
        error
            .path
            .as_deref()
            .is_some_and(|p| p.ends_with("key-size")),
        "{error:?}"
    );
    // a value of the wrong type: invalid-value
    let error = rpc_error(
        nc.edit_config(
            "running",
            &format!("<qkd_node xmlns=\"{NODE_NS}\"><key-manager xmlns=\"{KM_NS}\"><etsi014><key-size>many</key-size></etsi014></key-manager></qkd_node>"),
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
        reply.contains(&format!("<qkdn_id>{}</qkdn_id>", node_id("a1")))
            && !reply.contains("qkd_links"),
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
    let bed = Bed::up_static(TOPOLOGY);
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

    // an agent that crashes before the confirmation restores the previous configuration
    two.edit_config("candidate", &route("z5", "a2"))
        .await
        .unwrap();
    two.rpc("<commit><confirmed/><confirm-timeout>600</confirm-timeout></commit>")
        .await
        .unwrap();
    assert!(two
        .get_config("running", Some(ROUTES_FILTER))
        .await
        .unwrap()
        .contains(">z5<"));
    bed.cli(&["node", "stop", "a1", "--kill"]);
    bed.cli(&["node", "start", "a1"]);
    let after = bed.netconf("a1").await;
    let routes = after
        .get_config("running", Some(ROUTES_FILTER))
        .await
        .unwrap();
    assert!(
        !routes.contains(">z5<") && routes.contains(">z4<"),
        "{routes}"
    );

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
    let bed = Bed::up_static(TOPOLOGY);
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
    // ... and the ETSI GS QKD 015 ones: sdqkdn_link_down, sdqkdn_link_perf_update (skr 0)
    let (message, etsi_down, etsi_perf) = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut own, mut down, mut perf) = (None, None, None);
        loop {
            let n = notifications.recv().await.unwrap();
            if n.contains("link-status-change") {
                own = Some(n);
            } else if n.contains("<sdqkdn_link_down") {
                down = Some(n);
            } else if n.contains("<sdqkdn_link_perf_update") {
                perf = Some(n);
            }
            if let (Some(own), Some(down), Some(perf)) = (&own, &down, &perf) {
                return (own.clone(), down.clone(), perf.clone());
            }
        }
    })
    .await
    .expect("no notifications within 10 s");
    assert!(
        message.contains("<link-id>a1-a2</link-id>")
            && message.contains("<oper-state>down</oper-state>"),
        "{message}"
    );
    assert!(message.contains("<eventTime>"), "{message}");
    let id = format!("<qkdl_id>{}</qkdl_id>", link_id("a1-a2"));
    assert!(
        etsi_down.contains(&id) && etsi_down.contains(NODE_NS),
        "{etsi_down}"
    );
    assert!(
        etsi_perf.contains(&id) && etsi_perf.contains("<skr>0</skr>"),
        "{etsi_perf}"
    );
}

/// A subtree filter nesting `depth` elements under `qkd_node`.
fn deep_filter(depth: usize) -> String {
    format!(
        "<qkd_node xmlns=\"{NODE_NS}\">{}{}</qkd_node>",
        "<x>".repeat(depth),
        "</x>".repeat(depth)
    )
}

/// Issue 15: a 5 000-deep `<get>` filter from a read-only user used to overflow a worker's
/// stack and abort the KM or the controller. It now gets an `rpc-error` and the same session,
/// the KM's ETSI 014 API and the controller keep serving. The KM's log file is plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_requests_get_rpc_errors_and_the_daemons_keep_serving() {
    let bed = Bed::up(TOPOLOGY);
    let viewer = bed
        .netconf_as("a1", &bed.endpoints.netconf_readonly_user, false)
        .await
        .unwrap();
    let error = rpc_error(viewer.get(Some(&deep_filter(5_000))).await);
    assert_eq!(error.tag, ErrorTag::MalformedMessage, "{error:?}");
    assert!(error.message.contains("deeper than"), "{error:?}");
    // the same session answers the next get, and the KM serves ETSI 014
    let routes = viewer.get(Some(ROUTES_FILTER)).await.unwrap();
    assert!(routes.contains("key-manager"), "{routes}");
    let status = bed.client("sae-a1-1").status("sae-a2-1").await.unwrap();
    assert_eq!(status.source_KME_ID, "a1");
    // too many elements: too-big
    let wide = format!(
        "<qkd_node xmlns=\"{NODE_NS}\">{}</qkd_node>",
        "<x/>".repeat(100_001)
    );
    assert_eq!(
        rpc_error(viewer.get(Some(&wide)).await).tag,
        ErrorTag::TooBig
    );
    viewer.get_config("running", None).await.unwrap();

    // the controller's NETCONF port, as its read-only user
    let controller = bed
        .controller_netconf("A", &bed.endpoints.netconf_readonly_user)
        .await;
    let error = rpc_error(controller.get(Some(&deep_filter(5_000))).await);
    assert_eq!(error.tag, ErrorTag::MalformedMessage, "{error:?}");
    controller.get_config("running", None).await.unwrap();
    let status = bed.client("sae-a1-1").status("sae-a2-1").await.unwrap();
    assert_eq!(status.target_KME_ID, "a2");

    // log files carry no terminal colour escapes
    let log = bed.log("a1");
    assert!(log.contains("refused NETCONF message"), "{log}");
    assert!(!log.contains("\x1b["), "colour escapes in the KM log");
}

/// A raw NETCONF channel (SSH subsystem) for sending arbitrary bytes.
async fn raw_channel(bed: &Bed, node: &str) -> russh::ChannelStream<russh::client::Msg> {
    struct Accept;
    impl russh::client::Handler for Accept {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            _: &russh::keys::PublicKey,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }
    let addr: std::net::SocketAddr = bed.endpoints.node(node).unwrap().netconf.parse().unwrap();
    let mut ssh = russh::client::connect(
        std::sync::Arc::new(russh::client::Config::default()),
        addr,
        Accept,
    )
    .await
    .unwrap();
    let login = &bed.endpoints.netconf_user;
    assert!(ssh
        .authenticate_password(&login.username, &login.password)
        .await
        .unwrap()
        .success());
    let channel = ssh.channel_open_session().await.unwrap();
    channel.request_subsystem(true, "netconf").await.unwrap();
    // keep the connection alive as long as the channel
    std::mem::forget(ssh);
    channel.into_stream()
}

async fn read_until(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    marker: &str,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if String::from_utf8_lossy(&buf).contains(marker) {
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "no answer within 10 s; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

fn chunk(message: &str) -> String {
    format!("\n#{}\n{message}\n##\n", message.len())
}

const HELLO_11: &str = "<hello xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><capabilities><capability>urn:ietf:params:netconf:base:1.1</capability></capabilities></hello>]]>]]>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_rpc_errors_and_broken_framing_closes_cleanly() {
    use tokio::io::AsyncWriteExt;
    let bed = Bed::up_static(TOPOLOGY);

    let mut s = raw_channel(&bed, "a3").await;
    read_until(&mut s, "]]>]]>").await.expect("server hello");
    s.write_all(HELLO_11.as_bytes()).await.unwrap();
    // malformed XML: an rpc-error, and the session goes on
    s.write_all(
        chunk(
            "<rpc message-id=\"1\" xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><get-config>",
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let reply = read_until(&mut s, "\n##\n")
        .await
        .expect("reply to malformed XML");
    assert!(reply.contains("malformed-message"), "{reply}");
    // no message-id: missing-attribute
    s.write_all(
        chunk("<rpc xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><get/></rpc>").as_bytes(),
    )
    .await
    .unwrap();
    let reply = read_until(&mut s, "\n##\n")
        .await
        .expect("reply to rpc without id");
    assert!(reply.contains("missing-attribute"), "{reply}");
    s.write_all(chunk("<rpc message-id=\"3\" xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><get-config><source><running/></source></get-config></rpc>").as_bytes()).await.unwrap();
    let reply = read_until(&mut s, "</rpc-reply>")
        .await
        .expect("reply to a valid rpc");
    assert!(
        reply.contains("message-id=\"3\"") && reply.contains("<data>"),
        "{reply}"
    );
    // broken chunk header: the session is closed, not stuck
    s.write_all(b"\n#xyz\n<rpc/>\n##\n").await.unwrap();
    assert!(
        read_until(&mut s, "never").await.is_none(),
        "session stayed open after broken framing"
    );

    // a message larger than the limit is refused before it is buffered
    let mut s = raw_channel(&bed, "a3").await;
    read_until(&mut s, "]]>]]>").await.expect("server hello");
    s.write_all(HELLO_11.as_bytes()).await.unwrap();
    s.write_all(b"\n#4000000000\n<rpc").await.unwrap();
    assert!(
        read_until(&mut s, "never").await.is_none(),
        "session stayed open after a huge chunk"
    );

    // a hello that is not one closes the session at once
    let mut s = raw_channel(&bed, "a3").await;
    read_until(&mut s, "]]>]]>").await.expect("server hello");
    s.write_all(b"<rpc/>]]>]]>").await.unwrap();
    assert!(read_until(&mut s, "never").await.is_none());

    // the server still serves everyone else
    let nc = bed.netconf("a3").await;
    nc.get_config("running", None).await.unwrap();
}

#[test]
fn netconf_rs_gets_the_running_config_over_base_1_0() {
    let bed = Bed::up_static(TOPOLOGY);
    let addr = bed.endpoints.node("a4").unwrap().netconf.clone();
    let login = bed.endpoints.netconf_user.clone();
    let transport =
        netconf_rs::transport::ssh::SSHTransport::connect(&addr, &login.username, &login.password)
            .expect("netconf-rs connects");
    let mut connection = netconf_rs::Connection::new(transport).expect("hello exchange");
    let config = connection.get_config().expect("get-config");
    assert!(
        config.contains(&format!("<qkdn_id>{}</qkdn_id>", node_id("a4"))),
        "{config}"
    );
    assert!(config.contains("message-id=\"100\""), "{config}");
}

#[test]
fn ncclient_and_netconf_console2_work_unchanged() {
    let Some(python) = common::interop_python("ncclient and netconf-console2") else {
        return;
    };
    let bed = Bed::up_static(TOPOLOGY);
    let summary = common::interop_script(
        &python,
        "netconf_clients.py",
        &[
            std::ffi::OsStr::new(bed.dir()),
            std::ffi::OsStr::new(common::QKDNI),
        ],
    );
    assert_eq!(summary["schemas_valid"], summary["schemas_fetched"]);
    assert_eq!(summary["ncclient_base11"], true);
}

/// Debian's netconfd (yuma123) behind OpenSSH, started by `tests/interop/netconfd.sh`;
/// stopped (and its directory removed) when dropped.
struct Netconfd {
    script: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Netconfd {
    /// Starts the server; returns it with its address, user and client key.
    fn start() -> (Self, std::net::SocketAddr, String, std::path::PathBuf) {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/netconfd.sh");
        let dir = std::env::temp_dir().join(format!("qkdni-netconfd-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let guard = Self {
            script: script.clone(),
            dir: dir.clone(),
        };
        let output = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "netconfd.sh start failed: {stdout}\n{stderr}"
        );
        let line = stdout.lines().last().expect("netconfd.sh printed nothing");
        let info: serde_json::Value = serde_json::from_str(line).unwrap();
        let addr = info["addr"].as_str().unwrap().parse().unwrap();
        let user = info["user"].as_str().unwrap().to_owned();
        let key = std::path::PathBuf::from(info["key"].as_str().unwrap());
        (guard, addr, user, key)
    }

    /// Whether netconfd is still running (it dies on messages it cannot handle).
    fn netconfd_alive(&self) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.dir.join("netconfd.pid")) else {
            return false;
        };
        // alive unless gone or a zombie (state "Z" after the command name in /proc/PID/stat)
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .is_ok_and(|stat| !stat.contains(") Z "))
    }

    fn logs(&self) -> String {
        ["netconfd.log", "netconfd.out", "sshd.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {name}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Netconfd {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("netconfd logs kept in {}", self.dir.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_drives_debian_netconfd() {
    use qkdni::netconf::client::{ClientOptions, Credentials, HostKeyCheck, NetconfClient};

    if !std::path::Path::new("/usr/sbin/netconfd").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install netconfd (see tests/interop/apt-packages.txt)"
        );
        eprintln!("skipped: /usr/sbin/netconfd is not installed (apt-get install netconfd openssh-server)");
        return;
    }
    let (server, addr, user, key_path) = Netconfd::start();
    let key =
        russh::keys::PrivateKey::from_openssh(std::fs::read_to_string(&key_path).unwrap()).unwrap();
    let options = |base_1_0_only: bool| ClientOptions {
        user: user.clone(),
        credentials: Credentials::Key(std::sync::Arc::new(key.clone())),
        // a local sshd started by this test
        host_key: HostKeyCheck::AcceptAny,
        connect_timeout: Duration::from_secs(60),
        // netconfd answers a full <get> slowly on a loaded 2-core machine
        timeout: Duration::from_secs(60),
        base_1_0_only,
    };
    let ietf_system = "urn:ietf:params:xml:ns:yang:ietf-system";

    // hello: both sides announce base:1.1, so the session runs chunked framing
    let nc = NetconfClient::connect(addr, options(false))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", server.logs()));
    assert!(nc.session_id > 0);
    for cap in [
        "urn:ietf:params:netconf:base:1.0",
        "urn:ietf:params:netconf:base:1.1",
    ] {
        assert!(
            nc.capabilities.iter().any(|c| c == cap),
            "{cap} missing: {:?}",
            nc.capabilities
        );
    }
    let candidate = nc
        .capabilities
        .iter()
        .any(|c| c == "urn:ietf:params:netconf:capability:candidate:1.0");
    let target = if candidate { "candidate" } else { "running" };

    // <get>: state includes the server's own monitoring data, with our session in it
    let state = nc
        .get(None)
        .await
        .unwrap_or_else(|e| panic!("get: {e}\n{}", server.logs()));
    assert!(state.contains("netconf-state"), "{state}");
    let sessions = nc
        .get(Some(
            "<netconf-state xmlns=\"urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring\"><sessions/></netconf-state>",
        ))
        .await
        .unwrap();
    assert!(
        sessions.contains(&format!("<session-id>{}</session-id>", nc.session_id)),
        "{sessions}"
    );
    assert!(
        !sessions.contains("<schemas>"),
        "filter ignored: {sessions}"
    );

    // <get-config>
    nc.get_config("running", None).await.unwrap();

    // <lock>/<unlock>, and a second session (base:1.0 framing) is refused the lock
    nc.lock("running").await.unwrap();
    let other = NetconfClient::connect(addr, options(true)).await.unwrap();
    assert_ne!(other.session_id, nc.session_id);
    let error = rpc_error(other.lock("running").await);
    assert_eq!(error.tag, ErrorTag::LockDenied, "{error:?}");
    assert!(
        error
            .info
            .iter()
            .any(|(k, v)| k == "session-id" && v == &nc.session_id.to_string()),
        "{error:?}"
    );
    nc.unlock("running").await.unwrap();
    other.lock("running").await.unwrap();
    other.unlock("running").await.unwrap();
    other.close().await.unwrap();

    // <edit-config> of ietf-system, committed when the target is the candidate
    let location = format!("qkdni-interop-{}", std::process::id());
    if candidate {
        nc.lock("candidate").await.unwrap();
    }
    nc.edit_config(
        target,
        &format!("<system xmlns=\"{ietf_system}\"><location>{location}</location></system>"),
    )
    .await
    .unwrap_or_else(|e| panic!("edit-config: {e}\n{}", server.logs()));
    if candidate {
        let pending = nc
            .get_config(
                "candidate",
                Some(&format!("<system xmlns=\"{ietf_system}\"/>")),
            )
            .await
            .unwrap();
        assert!(pending.contains(&location), "{pending}");
        nc.commit().await.unwrap();
        nc.unlock("candidate").await.unwrap();
    }
    let running = nc
        .get_config(
            "running",
            Some(&format!("<system xmlns=\"{ietf_system}\"/>")),
        )
        .await
        .unwrap();
    assert!(
        running.contains(&format!("<location>{location}</location>")),
        "{running}"
    );

    // invalid edits come back as typed rpc-errors, and the session goes on
    let error = rpc_error(
        nc.edit_config(
            target,
            &format!("<system xmlns=\"{ietf_system}\"><no-such-leaf>1</no-such-leaf></system>"),
        )
        .await,
    );
    assert!(
        matches!(
            error.tag,
            ErrorTag::UnknownElement | ErrorTag::BadElement | ErrorTag::InvalidValue
        ),
        "{error:?}"
    );
    let error = rpc_error(
        nc.edit_config(
            target,
            &format!("<system xmlns=\"{ietf_system}\"><clock><timezone-utc-offset>not-a-number</timezone-utc-offset></clock></system>"),
        )
        .await,
    );
    assert!(
        matches!(error.tag, ErrorTag::InvalidValue | ErrorTag::BadElement),
        "{error:?}"
    );
    if candidate {
        nc.discard_changes().await.unwrap();
    }
    let running = nc.get_config("running", None).await.unwrap();
    assert!(running.contains(&location), "{running}");
    assert!(!running.contains("not-a-number"), "{running}");

    nc.close().await.unwrap();
    assert!(
        server.netconfd_alive(),
        "netconfd died during the session\n{}",
        server.logs()
    );
    // a fresh session still works after ours closed
    let again = NetconfClient::connect(addr, options(false)).await.unwrap();
    again.get_config("running", None).await.unwrap();
    again.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.netconfd_alive(),
        "netconfd died after close-session\n{}",
        server.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_are_reused_and_replaced_when_closed() {
    let bed = Bed::up_static(TOPOLOGY);
    let pool =
        qkdni::netconf::pool::Pool::new(bed.endpoints.netconf_options(&bed.endpoints.netconf_user));
    let addr: std::net::SocketAddr = bed.endpoints.node("a2").unwrap().netconf.parse().unwrap();
    let first = pool.session(addr).await.unwrap();
    assert_eq!(
        pool.session(addr).await.unwrap().session_id,
        first.session_id
    );
    assert_eq!(pool.len().await, 1);

    // another operator kills the pooled session: the pool replaces it on the next use
    let admin = bed.netconf("a2").await;
    admin
        .rpc(&format!(
            "<kill-session><session-id>{}</session-id></kill-session>",
            first.session_id
        ))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !first.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the killed session is seen as closed");
    assert!(matches!(
        first.get_config("running", None).await,
        Err(ClientError::Closed)
    ));
    let reply = pool
        .rpc(addr, "<get-config><source><running/></source></get-config>")
        .await
        .unwrap();
    assert!(
        reply.contains(&format!("<qkdn_id>{}</qkdn_id>", node_id("a2"))),
        "{reply}"
    );
    assert_ne!(
        pool.session(addr).await.unwrap().session_id,
        first.session_id
    );
}

/// `testbed node start` returns only once the agent serves every port (NETCONF included),
/// also while both cores are busy: the first NETCONF session, ETSI 014 request and KMA
/// request right after it succeed without a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_start_returns_once_every_port_serves_on_a_busy_machine() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let bed = Bed::up_static(TOPOLOGY);
    // two spinning threads: another load keeping both cores busy
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let client = bed.client("sae-a3-1");
    for round in 0..3 {
        if round == 1 {
            bed.cli(&["node", "stop", "a3", "--kill"]);
        } else {
            bed.cli(&["node", "stop", "a3"]);
        }
        let started = std::time::Instant::now();
        bed.cli(&["node", "start", "a3"]);
        let took = started.elapsed();
        let nc = bed
            .netconf_as("a3", &bed.endpoints.netconf_user, false)
            .await;
        let nc = nc.unwrap_or_else(|e| panic!("round {round}: NETCONF right after start: {e}"));
        nc.get_config("running", Some(ROUTES_FILTER)).await.unwrap();
        client
            .status("sae-a3-2")
            .await
            .unwrap_or_else(|e| panic!("round {round}: ETSI 014 right after start: {e}"));
        qkdni::testbed::runner::link_reports(&bed.endpoints, "a3")
            .await
            .unwrap_or_else(|e| panic!("round {round}: KMA right after start: {e}"));
        println!("round {round}: node start returned after {took:?} under load");
    }
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }
}
