//! ETSI GS QKD 015 as the standard defines it: the modules qkdni serves as
//! `etsi-qkd-sdn-node` and `etsi-qkd-node-types` have the schema of the official V2.1.1
//! modules (`tests/etsi015/official/`), and what every KM agent serves, data and
//! notifications, is valid for those official modules, checked by `yanglint` (a real
//! process; missing, the tests are skipped on a developer's machine and fail under CI).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{self, Bed};

const OFFICIAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/etsi015/official");
const OURS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/yang");
const ETSI_NS: &str = "urn:etsi:qkd:yang:etsi-qkd-node";
const MODULES: [&str; 2] = ["etsi-qkd-node-types.yang", "etsi-qkd-sdn-node.yang"];

fn yanglint_runs() -> bool {
    common::tool("yanglint", &["--version"])
}

/// A scratch directory of the test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkdni-etsi015-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The official modules in `dir`, with the published text's three `when` conditions read
/// as the standard means them (see `official/README.md`).
fn official_fixed(dir: &Path) -> PathBuf {
    let types = std::fs::read_to_string(format!("{OFFICIAL}/{}", MODULES[0])).unwrap();
    std::fs::write(dir.join(MODULES[0]), types).unwrap();
    let mut node = std::fs::read_to_string(format!("{OFFICIAL}/{}", MODULES[1])).unwrap();
    for (from, to) in [
        (
            "when \"qkdl_type = 'VIRT'\"",
            "when \"derived-from-or-self(qkdl_type, 'etsi-qkdn-types:VIRT')\"",
        ),
        (
            "when \"qkdl_type = 'PHYS'\"",
            "when \"derived-from-or-self(qkdl_type, 'etsi-qkdn-types:PHYS')\"",
        ),
        (
            "when \"../qkdl_type = 'PHYS'\"",
            "when \"derived-from-or-self(../qkdl_type, 'etsi-qkdn-types:PHYS')\"",
        ),
        ("yang-version \"1\";", "yang-version 1.1;"),
    ] {
        assert!(node.contains(from), "the official text has {from}");
        node = node.replace(from, to);
    }
    std::fs::write(dir.join(MODULES[1]), node).unwrap();
    dir.to_owned()
}

fn yanglint(args: &[&str]) -> String {
    let output = Command::new("yanglint").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "yanglint {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A module's YIN text without its prose (description, reference, organization, contact).
fn yin_without_prose(dir: &Path, module: &str) -> String {
    let yin = yanglint(&[
        "-f",
        "yin",
        "-p",
        dir.to_str().unwrap(),
        dir.join(module).to_str().unwrap(),
    ]);
    let doc = roxmltree::Document::parse(&yin).unwrap();
    let mut out = String::new();
    fn walk(node: roxmltree::Node<'_, '_>, depth: usize, out: &mut String) {
        let name = node.tag_name().name();
        if ["description", "reference", "organization", "contact"].contains(&name) {
            return;
        }
        let mut attributes: Vec<String> = node
            .attributes()
            .map(|a| format!("{}={:?}", a.name(), a.value()))
            .collect();
        attributes.sort();
        out.push_str(&format!(
            "{}{name} {}\n",
            "  ".repeat(depth),
            attributes.join(" ")
        ));
        for child in node.children().filter(|c| c.is_element()) {
            walk(child, depth + 1, out);
        }
    }
    walk(doc.root_element(), 0, &mut out);
    out
}

#[test]
fn qkdni_serves_the_schema_of_the_official_modules() {
    if !yanglint_runs() {
        return;
    }
    let official = official_fixed(&scratch("schema"));
    let ours = Path::new(OURS);
    // the tree diagrams (RFC 8340) of both are equal ...
    let tree = |dir: &Path| {
        yanglint(&[
            "-f",
            "tree",
            "-p",
            dir.to_str().unwrap(),
            dir.join(MODULES[1]).to_str().unwrap(),
        ])
    };
    assert_eq!(tree(ours), tree(&official));
    // ... and so is every statement of both modules but the prose: groupings, types,
    // identities, defaults, when conditions, revisions, notifications
    for module in MODULES {
        assert_eq!(
            yin_without_prose(ours, module),
            yin_without_prose(&official, module),
            "{module}"
        );
    }
    let _ = std::fs::remove_dir_all(official);
}

/// The elements in the ETSI node namespace of `xml` (every top-most one, with its ETSI
/// descendants only: qkdni's augmentations stripped), each as a document of its own.
fn etsi_subtrees(xml: &str) -> Vec<String> {
    let wrapped = format!("<wrap>{xml}</wrap>");
    let doc = roxmltree::Document::parse(&wrapped).unwrap();
    fn write(node: roxmltree::Node<'_, '_>, top: bool, out: &mut String) {
        let name = node.tag_name().name();
        if top {
            out.push_str(&format!(
                "<{name} xmlns=\"{ETSI_NS}\" xmlns:etsi-qkd-node-types=\"{ETSI_NS}-types\">"
            ));
        } else {
            out.push_str(&format!("<{name}>"));
        }
        for child in node.children() {
            if child.is_element() {
                if child.tag_name().namespace() == Some(ETSI_NS) {
                    write(child, false, out);
                }
            } else if let Some(text) = child.text() {
                let text = text.trim();
                // identityref values: written with the one prefix declared above
                let text = match text.split_once(':') {
                    Some((prefix, identity))
                        if node.lookup_namespace_uri(Some(prefix))
                            == Some(&format!("{ETSI_NS}-types")[..]) =>
                    {
                        format!("etsi-qkd-node-types:{identity}")
                    }
                    _ => text.to_owned(),
                };
                out.push_str(
                    &text
                        .replace('&', "&amp;")
                        .replace('<', "&lt;")
                        .replace('>', "&gt;"),
                );
            }
        }
        out.push_str(&format!("</{name}>"));
    }
    doc.descendants()
        .filter(|n| {
            n.is_element()
                && n.tag_name().namespace() == Some(ETSI_NS)
                && n.parent_element()
                    .is_none_or(|p| p.tag_name().namespace() != Some(ETSI_NS))
        })
        .map(|n| {
            let mut out = String::new();
            write(n, true, &mut out);
            out
        })
        .collect()
}

/// Validates `xml` as yanglint data of type `kind` (`data`, `notif`) against the official
/// modules in `official`.
fn valid_for_official(official: &Path, kind: &str, name: &str, xml: &str) {
    let file = official.join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    let dir = official.to_str().unwrap();
    let output = Command::new("yanglint")
        .args(["-p", dir, "-t", kind])
        .args(MODULES.map(|m| official.join(m)))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{name} is not valid for the official ETSI GS QKD 015 modules: {}\n{xml}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_km_serves_data_and_notifications_valid_for_the_official_modules() {
    if !yanglint_runs() {
        return;
    }
    let official = official_fixed(&scratch("data"));
    let bed = Bed::up_static("single-domain.toml");
    let a1 = bed.netconf("a1").await;
    assert!(
        a1.capabilities
            .iter()
            .any(|c| c.contains("module=etsi-qkd-sdn-node") && c.contains("revision=2022-01-30")),
        "{:?}",
        a1.capabilities
    );
    let mut notifications = a1.subscribe().await.unwrap();
    // an application: sae-a1-1 obtains keys shared with sae-a5-1 (relayed over a2, a4)
    bed.wait_path(&["a1", "a2", "a4", "a5"], 4).await;
    bed.deliver("sae-a1-1", "sae-a5-1", 2).await;
    // a link fault and its repair
    bed.cli(&["link", "down", "a1-a2"]);
    bed.cli(&["link", "up", "a1-a2"]);
    let wanted = [
        "sdqkdn_application_new",
        "sdqkdn_link_down",
        "sdqkdn_link_perf_update",
        "alarm",
        "event",
    ];
    let mut seen = std::collections::BTreeMap::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while seen.len() < wanted.len() {
            let n = notifications.recv().await.unwrap();
            for etsi in etsi_subtrees(&n) {
                let name = wanted
                    .iter()
                    .find(|w| etsi.starts_with(&format!("<{w} ")))
                    .copied();
                if let Some(name) = name {
                    seen.entry(name).or_insert(etsi);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("ETSI notifications seen: {:?}", seen.keys()));
    for (name, xml) in &seen {
        valid_for_official(&official, "notif", name, xml);
    }
    assert!(seen["sdqkdn_application_new"].contains("<server_app_id>sae-a1-1</server_app_id>"));

    // every node's data, augmentations aside
    for node in ["a1", "a2", "a3", "a4", "a5"] {
        let nc = bed.netconf(node).await;
        let data = nc
            .get(Some(&format!("<qkd_node xmlns=\"{ETSI_NS}\"/>")))
            .await
            .unwrap();
        let trees = etsi_subtrees(&data);
        assert_eq!(trees.len(), 1, "{data}");
        let id = qkdni::etsi015::node_id("A", node).to_string();
        assert!(
            trees[0].contains(&format!("<qkdn_id>{id}</qkdn_id>")),
            "{}",
            trees[0]
        );
        assert!(trees[0].contains("<qkd_interface>"), "{}", trees[0]);
        assert!(trees[0].contains("<qkdl_performance>"), "{}", trees[0]);
        if node == "a1" {
            let app = qkdni::etsi015::app_id("A", "sae-a1-1", "sae-a5-1");
            assert!(
                trees[0].contains(&format!("<app_id>{app}</app_id>")),
                "{}",
                trees[0]
            );
        }
        valid_for_official(&official, "data", node, &trees[0]);
        // the running configuration alone too
        let config = nc
            .get_config("running", Some(&format!("<qkd_node xmlns=\"{ETSI_NS}\"/>")))
            .await
            .unwrap();
        valid_for_official(
            &official,
            "config",
            &format!("{node}-config"),
            &etsi_subtrees(&config)[0],
        );
    }
    let _ = std::fs::remove_dir_all(official);
}

#[test]
fn augmentations_are_stripped_and_prefixes_kept() {
    let xml = r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node" xmlns:t="urn:etsi:qkd:yang:etsi-qkd-node-types"><qkdn_status>t:OPERATING</qkdn_status><key-manager xmlns="urn:qkdni:yang:qkdni-km"><x>1</x></key-manager></qkd_node>"#;
    assert_eq!(
        etsi_subtrees(xml),
        vec![format!("<qkd_node xmlns=\"{ETSI_NS}\" xmlns:etsi-qkd-node-types=\"{ETSI_NS}-types\"><qkdn_status>etsi-qkd-node-types:OPERATING</qkdn_status></qkd_node>")]
    );
}
