//! Shared helpers of the integration tests: a testbed brought up with the real `qkdni`
//! binary, torn down when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qkdni::etsi014;
use qkdni::testbed::endpoints::Endpoints;
use qkdni::tls;

pub const QKDNI: &str = env!("CARGO_BIN_EXE_qkdni");

/// How long [`eventually`] waits.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// Asks `probe` every `every` until it gives a value (`Ok`), for at most [`EVENTUALLY`];
/// then fails with `what` and what the probe last saw (`Err`).
pub async fn eventually<T, S, F, Fut>(what: &str, every: Duration, mut probe: F) -> T
where
    S: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, S>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {EVENTUALLY:?}; last seen: {seen:#?}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

pub fn topology(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testbed")
        .join(name)
}

/// Runs `qkdni <args>` and returns its stdout; panics with its output on failure.
pub fn qkdni(args: &[&str]) -> String {
    let output = Command::new(QKDNI).args(args).output().expect("run qkdni");
    assert!(
        output.status.success(),
        "qkdni {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The Python of the interop tools (`QKDNI_PYTHON`, a venv with `tests/interop/
/// requirements.txt`). Without it the calling test is skipped, except under CI, where the
/// tools must be there.
pub fn interop_python(tools: &str) -> Option<std::ffi::OsString> {
    let python = std::env::var_os("QKDNI_PYTHON");
    if python.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide QKDNI_PYTHON with {tools} installed"
        );
        eprintln!("skipped: set QKDNI_PYTHON to a python with {tools}");
    }
    python
}

/// Runs the interop script `tests/interop/<script>` with `python` and `args`; asserts it
/// succeeded and that it reports no failed check. Returns its summary (the JSON object of
/// its last line).
pub fn interop_script(
    python: &std::ffi::OsStr,
    script: &str,
    args: &[&std::ffi::OsStr],
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    if let Some(failed) = summary.get("failed") {
        assert_eq!(failed, &serde_json::json!([]), "{stderr}");
    }
    summary
}

/// Whether the external tool `name` runs (`name args...` succeeds). Without it the calling
/// test is skipped on a developer's machine; under CI (`CI` set) the test fails instead.
pub fn tool(name: &str, args: &[&str]) -> bool {
    let found = Command::new(name)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI must provide {name}");
        eprintln!("skipped: {name} not found");
    }
    found
}

/// A running testbed.
pub struct Bed {
    pub dir: PathBuf,
    pub endpoints: Endpoints,
}

impl Bed {
    pub fn up(topology_file: &str) -> Self {
        Self::up_with(topology_file, &[])
    }

    /// A testbed whose KMs have static relay routes and no controller.
    pub fn up_static(topology_file: &str) -> Self {
        Self::up_with(topology_file, &["--no-controller"])
    }

    /// A testbed with every KM in its own network namespace (`--netns`, root only).
    pub fn up_netns(topology_file: &str) -> Self {
        Self::up_with(topology_file, &["--netns"])
    }

    /// A testbed of the topology `text` (TOML), with static routes and no controller.
    pub fn up_text(text: &str) -> Self {
        let file =
            std::env::temp_dir().join(format!("qkdni-topology-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&file, text).unwrap();
        let bed = Self::up_path(&file, &["--no-controller"]);
        let _ = std::fs::remove_file(&file);
        bed
    }

    /// A testbed of the topology `text` (TOML) with its controllers.
    pub fn up_text_controlled(text: &str) -> Self {
        let file =
            std::env::temp_dir().join(format!("qkdni-topology-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&file, text).unwrap();
        let bed = Self::up_path(&file, &[]);
        let _ = std::fs::remove_file(&file);
        bed
    }

    fn up_with(topology_file: &str, flags: &[&str]) -> Self {
        Self::up_path(&topology(topology_file), flags)
    }

    fn up_path(topo: &Path, flags: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("qkdni-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "testbed",
            "up",
            topo.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        qkdni(&args);
        let endpoints = Endpoints::load(&dir).unwrap();
        Self { dir, endpoints }
    }

    pub fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// `qkdni testbed <args> --dir <dir>`.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = vec!["testbed"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--dir", self.dir()]);
        qkdni(&all)
    }

    pub fn client(&self, sae: &str) -> etsi014::Client {
        self.endpoints
            .etsi014_client(sae, Duration::from_secs(20))
            .unwrap()
    }

    /// An HTTPS client presenting `sae`'s certificate, for raw requests.
    pub fn http(&self, sae: &str) -> reqwest::Client {
        let files = self.endpoints.sae_tls(sae).expect("SAE");
        tls::https_client(&files, Duration::from_secs(20)).unwrap()
    }

    pub fn kme(&self, node: &str) -> String {
        self.endpoints.node(node).unwrap().etsi014.clone()
    }

    pub async fn wait_path(&self, path: &[&str], blocks: usize) {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        qkdni::testbed::runner::wait_path_keys(
            &self.endpoints,
            &path,
            blocks,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    }

    /// Blocks of `link` that `node` may allocate.
    pub async fn own_blocks(&self, node: &str, link: &str) -> usize {
        let reports = qkdni::testbed::runner::link_reports(&self.endpoints, node)
            .await
            .unwrap();
        reports.iter().find(|l| l.id == link).unwrap().own_blocks
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(&self.endpoints.node(node).unwrap().log).unwrap_or_default()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = Command::new(QKDNI)
            .args(["testbed", "down", "--dir", self.dir()])
            .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("testbed kept for inspection in {}", self.dir.display());
        }
    }
}

impl Bed {
    /// A NETCONF session to `node` as the operator.
    pub async fn netconf(
        &self,
        node: &str,
    ) -> std::sync::Arc<qkdni::netconf::client::NetconfClient> {
        qkdni::testbed::runner::netconf(&self.endpoints, node)
            .await
            .unwrap()
    }

    /// A NETCONF session to `node` as `login`, with `base_1_0_only` framing if asked.
    pub async fn netconf_as(
        &self,
        node: &str,
        login: &qkdni::testbed::endpoints::NetconfLogin,
        base_1_0_only: bool,
    ) -> Result<
        std::sync::Arc<qkdni::netconf::client::NetconfClient>,
        qkdni::netconf::client::ClientError,
    > {
        use qkdni::netconf::client::{ClientOptions, NetconfClient};
        let addr = self.endpoints.node(node).unwrap().netconf.parse().unwrap();
        NetconfClient::connect(
            addr,
            ClientOptions {
                base_1_0_only,
                ..self.endpoints.netconf_options(login)
            },
        )
        .await
    }
}

impl Bed {
    /// A NETCONF session to `domain`'s controller as `login`.
    pub async fn controller_netconf(
        &self,
        domain: &str,
        login: &qkdni::testbed::endpoints::NetconfLogin,
    ) -> std::sync::Arc<qkdni::netconf::client::NetconfClient> {
        use qkdni::netconf::client::NetconfClient;
        let controller = self
            .endpoints
            .controller(domain)
            .expect("domain controller");
        NetconfClient::connect(
            controller.netconf.parse().unwrap(),
            self.endpoints.netconf_options(login),
        )
        .await
        .unwrap()
    }

    /// An HTTPS client of the domain controller's REST API, with the orchestrator's token.
    pub fn controller(&self, domain: &str) -> (reqwest::Client, String, String) {
        let c = self
            .endpoints
            .controller(domain)
            .expect("domain controller");
        let http = tls::https_client(
            &self.endpoints.operator_tls_at(&c.name),
            Duration::from_secs(30),
        )
        .unwrap();
        (http, c.rest.clone(), c.token.clone())
    }

    /// Creates a key supply session through the controller; returns it as JSON.
    pub async fn create_session(&self, master: &str, slave: &str) -> serde_json::Value {
        self.create_session_at(master, slave, 0.0).await
    }

    /// Creates a key supply session demanding `rate_bps` through domain A's controller;
    /// returns it as JSON.
    pub async fn create_session_at(
        &self,
        master: &str,
        slave: &str,
        rate_bps: f64,
    ) -> serde_json::Value {
        let (http, rest, token) = self.controller("A");
        let response = http
            .post(format!("{rest}/api/v1/sessions"))
            .bearer_auth(token)
            .json(&serde_json::json!({"master_sae": master, "slave_sae": slave, "rate_bps": rate_bps}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    /// Sets domain A's route policy over the controller's NETCONF, as an operator does.
    pub async fn set_policy(&self, policy: &str) {
        self.controller_netconf("A", &self.endpoints.netconf_user)
            .await
            .edit_config(
                "running",
                &format!("<controller xmlns=\"urn:qkdni:yang:qkdni-controller\"><policy>{policy}</policy></controller>"),
            )
            .await
            .unwrap();
    }
}

impl Bed {
    /// An HTTPS client that trusts the testbed CA and presents no certificate.
    pub fn anonymous_https(&self) -> reqwest::Client {
        tls::https_client_trusting(
            std::slice::from_ref(&self.endpoints.ca_cert),
            Duration::from_secs(20),
        )
        .unwrap()
    }
}

impl Bed {
    /// The events of `domain`'s controller, oldest first.
    pub async fn controller_events(&self, domain: &str) -> Vec<serde_json::Value> {
        let events = self.controller_get(domain, "/api/v1/events").await;
        events.as_array().cloned().unwrap_or_default()
    }

    /// GET `path` on `domain`'s controller REST API (200 expected), as JSON.
    /// `GET {path}` of `domain`'s manager REST API (bearer token), answered 200.
    pub async fn manager_response(&self, domain: &str, path: &str) -> reqwest::Response {
        let manager = self.endpoints.manager(domain).expect("a manager");
        let response = self
            .anonymous_https()
            .get(format!("{}{path}", manager.rest))
            .bearer_auth(&manager.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{domain} {path}");
        response
    }

    /// `GET {path}` of `domain`'s manager REST API, as JSON.
    pub async fn manager_get(&self, domain: &str, path: &str) -> serde_json::Value {
        self.manager_response(domain, path)
            .await
            .json()
            .await
            .unwrap()
    }

    /// `GET {path}` of `node`'s KMA as the domain's operator (client certificate), as JSON.
    pub async fn km_admin_get(&self, node: &str, path: &str) -> serde_json::Value {
        let tls = self.endpoints.operator_tls_at(node);
        let client = tls::https_client(&tls, Duration::from_secs(10)).unwrap();
        let kma = &self.endpoints.node(node).unwrap().kma;
        let response = client.get(format!("{kma}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{node} {path}");
        response.json().await.unwrap()
    }

    /// The key IDs of `node`'s accounting records of `kind` (`supplied`, `expired`, ...), in
    /// record order.
    pub async fn accounting_key_ids(&self, node: &str, kind: &str) -> Vec<String> {
        let body = self.km_admin_get(node, "/admin/v1/accounting").await;
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == kind)
            .flat_map(|r| {
                let ids = r["key_ids"].as_str().unwrap().split(' ');
                ids.map(str::to_owned).collect::<Vec<_>>()
            })
            .collect()
    }

    pub async fn controller_get(&self, domain: &str, path: &str) -> serde_json::Value {
        let (http, rest, token) = self.controller(domain);
        let response = http
            .get(format!("{rest}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    /// `number` 256-bit keys from `master` to `slave` over ETSI 014: the same IDs and bytes
    /// at both ends, and the same again when the slave asks twice. Returns the key IDs.
    pub async fn deliver(&self, master: &str, slave: &str, number: u32) -> Vec<String> {
        let request = etsi014::KeyRequest {
            number: Some(number),
            size: Some(256),
            ..Default::default()
        };
        let keys = self
            .client(master)
            .enc_keys(slave, &request)
            .await
            .unwrap_or_else(|e| panic!("keys for {slave}: {e}"));
        assert_eq!(keys.keys.len(), number as usize);
        let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
        let fetched = self
            .client(slave)
            .dec_keys(master, &ids)
            .await
            .unwrap_or_else(|e| panic!("{slave} gets the keys: {e}"));
        assert_eq!(fetched.keys.len(), keys.keys.len());
        for (a, b) in keys.keys.iter().zip(&fetched.keys) {
            assert_eq!((&a.key_ID, &a.key), (&b.key_ID, &b.key));
        }
        // asked again, as after an answer lost on the way, the same key (refetch window)
        let again = self
            .client(slave)
            .dec_keys(master, &ids[..1])
            .await
            .unwrap_or_else(|e| panic!("{slave} gets the key again: {e}"));
        assert_eq!(
            (&again.keys[0].key_ID, &again.keys[0].key),
            (&keys.keys[0].key_ID, &keys.keys[0].key)
        );
        ids
    }
}
