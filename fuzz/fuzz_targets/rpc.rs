//! Fuzzes the NETCONF RPC layer: any message text goes through the operation dispatcher
//! (XML parsing, filters, edit engine, libyang) of a server whose application accepts every
//! valid configuration. It must always produce an `rpc-reply`, never panic.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use qkdni::netconf::server::{Application, NetconfConfig, NetconfServer, Notification};
use qkdni::netconf::rpc::SessionState;
use qkdni::netconf::RpcError;
use qkdni::yang::Tree;
use tokio::sync::broadcast;

/// Stack of a tokio worker thread (tokio's default).
const WORKER_STACK: usize = 2 * 1024 * 1024;

/// An application that keeps nothing but the datastores themselves.
struct Accepting(broadcast::Sender<Notification>);

impl Application for Accepting {
    fn initial_config(&self) -> String {
        "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><qkdn_id>7eec982d-9ca7-59e0-b252-c124f3522b41</qkdn_id></qkd_node>".into()
    }
    fn apply(&self, _old: &Tree, _new: &Tree) -> Result<(), RpcError> {
        Ok(())
    }
    fn state(&self) -> Result<Tree, RpcError> {
        Ok(qkdni::yang::empty())
    }
    fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.0.subscribe()
    }
}

fn fixture() -> &'static (tokio::runtime::Runtime, Arc<NetconfServer>) {
    static FIXTURE: OnceLock<(tokio::runtime::Runtime, Arc<NetconfServer>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = NetconfConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            host_key: std::env::temp_dir().join("qkdni-fuzz-host-key"),
            users: vec![qkdni::netconf::server::User {
                name: "fuzz".into(),
                password: None,
                authorized_keys: Vec::new(),
                group: qkdni::netconf::server::Group::Admin,
            }],
            max_message_bytes: 1 << 20,
            running_file: None,
            limits: Default::default(),
        };
        let server = runtime
            .block_on(async {
                NetconfServer::new(config, Arc::new(Accepting(broadcast::channel(4).0)))
            })
            .unwrap();
        (runtime, server)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (runtime, server) = fixture();
    // On a thread with a tokio worker's stack (2 MiB) rather than libFuzzer's main thread
    // (8 MiB): deep recursion that would abort a daemon crashes here too.
    let reply = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(WORKER_STACK)
            .spawn_scoped(scope, || {
                let mut session = SessionState {
                    id: 1,
                    user: "fuzz".into(),
                    subscription: None,
                };
                match runtime.block_on(qkdni::netconf::rpc::handle(server, &mut session, text)) {
                    qkdni::netconf::rpc::Outcome::Reply(r)
                    | qkdni::netconf::rpc::Outcome::Close(r) => r,
                }
            })
            .expect("fuzz worker thread")
            .join()
            .expect("rpc::handle panicked")
    });
    assert!(reply.starts_with("<rpc-reply"));
});
