//! The audit log over a real two-domain run (GWN testbed, controllers and managers): keys
//! delivered across the domains and one NETCONF edit by the operator, then the real binary's
//! `qkdni audit verify` passes on every daemon's log, `show` lists the edit with its user and
//! the delivery by key ID, no delivered key (base64) is in any audit file, a restarted KM
//! continues its chain, and one changed byte makes `verify` fail naming the record.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::Bed;
use qkdni::etsi014::KeyRequest;

const KM_NS: &str = "urn:qkdni:yang:qkdni-km";
const NODE_NS: &str = "urn:etsi:qkd:yang:etsi-qkd-node";

/// `qkdni audit <args>`: (success, stdout).
fn audit(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qkdni"))
        .arg("audit")
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every daemon's state directory: (name, dir).
fn state_dirs(bed: &Bed) -> Vec<(String, PathBuf)> {
    let mut dirs = Vec::new();
    for (name, domain) in &bed.endpoints.domains {
        for node in domain.nodes.keys() {
            let config = &bed.endpoints.node(node).unwrap().config;
            let config = qkdni::km::config::KmConfig::load(config).unwrap();
            dirs.push((node.clone(), config.data_dir));
        }
        if let Some(c) = bed.endpoints.controller(name) {
            let config = qkdni::control::config::ControllerConfig::load(&c.config).unwrap();
            dirs.push((c.name.clone(), config.data_dir));
        }
        if let Some(m) = bed.endpoints.manager(name) {
            dirs.push((m.name.clone(), m.config.parent().unwrap().to_owned()));
        }
    }
    dirs
}

/// Every byte of every audit file under `dir`.
fn audit_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir.join("audit")).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    all
}

/// The first line of `qkdni audit show <dir> --kind <kind>` that `pred` accepts, waiting up
/// to `seconds` for it (records are durable within one group commit of their event).
async fn wait_for_record(
    dir: &Path,
    kind: &str,
    seconds: u64,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let (ok, text) = audit(&["show", dir.to_str().unwrap(), "--kind", kind]);
        assert!(ok, "{text}");
        if let Some(line) = text.lines().find(|l| pred(l)) {
            return line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such {kind} record in {}: {text}",
            dir.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_run_is_audited_verified_and_tampering_is_found() {
    let bed = Bed::up("two-domain-gwn.toml");
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 64)
        .await;
    bed.wait_path(&["a1", "a3", "ga2", "gb2", "b3", "b1"], 64)
        .await;

    // keys across the domains: a1's SAE for b1's
    let request = KeyRequest {
        number: Some(4),
        size: Some(256),
        ..Default::default()
    };
    let keys = bed
        .client("sae-a1-1")
        .enc_keys("sae-b1-1", &request)
        .await
        .unwrap();
    let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
    let fetched = bed
        .client("sae-b1-1")
        .dec_keys("sae-a1-1", &ids)
        .await
        .unwrap();
    assert_eq!(fetched.keys.len(), 4);

    // one NETCONF edit by the operator on a1
    let user = bed.endpoints.netconf_login_of("a1").username.clone();
    let nc = bed.netconf("a1").await;
    nc.edit_config(
        "running",
        &format!("<qkd_node xmlns=\"{NODE_NS}\"><key-manager xmlns=\"{KM_NS}\"><etsi014><max-key-per-request>100</max-key-per-request></etsi014></key-manager></qkd_node>"),
    )
    .await
    .unwrap();

    let dirs = state_dirs(&bed);
    assert!(dirs.len() >= 14, "{dirs:?}");
    let dir_of = |name: &str| dirs.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let a1 = dir_of("a1");
    let b1 = dir_of("b1");

    // show: the edit with its user (its records are durable within a commit: wait on it)
    let shows_edit = || {
        let (ok, text) = audit(&["show", a1.to_str().unwrap(), "--kind", "netconf-edit"]);
        assert!(ok, "{text}");
        text
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut text = shows_edit();
    while !text.contains("max-key-per-request") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        text = shows_edit();
    }
    let edit = text
        .lines()
        .find(|l| l.contains("max-key-per-request"))
        .unwrap_or_else(|| panic!("no edit recorded: {text}"));
    assert!(edit.contains(&format!("who={user}")), "{edit}");
    assert!(edit.contains("\"100\""), "{edit}");
    // ... the delivery by key ID, at both ends
    let (ok, text) = audit(&["show", a1.to_str().unwrap(), "--kind", "etsi014-*"]);
    assert!(ok, "{text}");
    let supplied = text
        .lines()
        .find(|l| l.contains("etsi014-keys-supplied") && l.contains(&ids[0]))
        .unwrap_or_else(|| panic!("no supply of {} at a1: {text}", ids[0]));
    assert!(
        supplied.contains("who=cert:sae-a1-1") && supplied.contains("sae-b1-1"),
        "{supplied}"
    );
    let (_, text) = audit(&["show", b1.to_str().unwrap(), "--who", "cert:sae-b1-1"]);
    assert!(
        text.lines()
            .any(|l| l.contains("etsi014-keys-delivered") && ids.iter().all(|id| l.contains(id))),
        "no delivery at b1: {text}"
    );
    // the controllers agreed over Cxi, and recorded it with the transaction
    let (_, text) = audit(&[
        "show",
        dir_of("controller-A").to_str().unwrap(),
        "--kind",
        "cxi",
    ]);
    assert!(text.contains("tx=cxi-"), "{text}");
    // ... and B's controller recorded A's Cxi messages with A's identity and the transaction
    let (domain_a, domain_b) = ("A", "B");
    let controller_a = &bed.endpoints.controller(domain_a).unwrap().name;
    let controller_b = &bed.endpoints.controller(domain_b).unwrap().name;
    let who = format!(
        "who=cert:{}",
        qkdni::tls::foreign_identity(controller_a, domain_a)
    );
    let prepare = wait_for_record(&dir_of(controller_b), "cxi", 10, |l| {
        l.contains(&who) && l.contains("tx=cxi-") && l.contains("/cxi/v1/transactions")
    })
    .await;
    assert!(prepare.contains("\"status\":200"), "{prepare}");
    // ... and B's manager A's Mxi messages with A's manager's identity and the message id
    let manager_a = &bed.endpoints.manager(domain_a).unwrap().name;
    let manager_b = &bed.endpoints.manager(domain_b).unwrap().name;
    let who = format!(
        "who=cert:{}",
        qkdni::tls::foreign_identity(manager_a, domain_a)
    );
    // a report pack every 5 s: the first may have left before B's manager listened
    let report = wait_for_record(&dir_of(manager_b), "mxi", 15, |l| {
        l.contains(&who) && l.contains("tx=mxi-") && l.contains("/mxi/v1/reports")
    })
    .await;
    assert!(report.contains("\"status\":"), "{report}");

    // verify passes on every daemon's log; no key is in any of them
    for (name, dir) in &dirs {
        let (ok, text) = audit(&["verify", dir.to_str().unwrap()]);
        assert!(ok, "{name}: {text}");
        assert!(text.contains("chain intact"), "{name}: {text}");
        let bytes = audit_bytes(dir);
        let haystack = String::from_utf8_lossy(&bytes);
        for key in keys.keys.iter().chain(&fetched.keys) {
            assert!(
                !haystack.contains(&key.key),
                "{name}: key {} in the audit log",
                key.key_ID
            );
        }
    }

    // a restarted KM continues its chain
    bed.cli(&["node", "stop", "a1", "--kill"]);
    bed.cli(&["node", "start", "a1"]);
    let (ok, text) = audit(&["show", a1.to_str().unwrap(), "--kind", "audit-opened"]);
    assert!(ok && text.contains("audit-opened"), "{text}");
    let (ok, text) = audit(&["verify", a1.to_str().unwrap()]);
    assert!(ok, "{text}");

    // one changed byte: verify fails and names the record
    bed.cli(&["node", "stop", "a1"]);
    let segment = a1.join("audit").join("segment-000001.jsonl");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(ids[0].len())
        .position(|w| w == ids[0].as_bytes())
        .unwrap();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&segment, &bytes).unwrap();
    let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
    let (ok, text) = audit(&["verify", a1.to_str().unwrap()]);
    assert!(!ok, "verify passed a changed log: {text}");
    assert!(
        text.contains(&format!("segment-000001.jsonl line {line} ")) && text.contains("altered"),
        "{text}"
    );
}
