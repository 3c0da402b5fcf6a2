//! Policy-based control with QoS classes (issue 14 part 3) over real KM processes: classes
//! configured over NETCONF (the operator's path), two application pairs of two classes
//! drawing keys from one link whose emulated key rate is the bottleneck, and a quota that
//! runs out and still holds after the KM is killed and restarted. Shares are measured over
//! the key bits delivered, never over wall-clock time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::common::Bed;
use qkdni::etsi014::{ClientError, KeyRequest};

/// Two KMs, one link of 25 600 bit/s (100 blocks/s) with a small pool: the bottleneck.
const TOPOLOGY: &str = r#"
name = "qos"
[[domains]]
name = "Q"
[[domains.nodes]]
name = "q1"
saes = ["sae-q1-hi", "sae-q1-lo"]
[[domains.nodes]]
name = "q2"
saes = ["sae-q2-hi", "sae-q2-lo"]
[[domains.links]]
id = "q1-q2"
nodes = ["q1", "q2"]
rate_bps = 25600.0
capacity_blocks = 128
"#;

const GOLD_GUARANTEE: u64 = 12_000;

/// The QoS policy of q1 (`qkdni-km` `key-manager/qos`): gold for the pair hi/hi with a
/// guaranteed rate, capped (a quota of 1024 bits per hour) for hi/lo, bronze for the rest.
fn policy() -> String {
    format!(
        r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><key-manager xmlns="urn:qkdni:yang:qkdni-km"><qos>
<class><name>gold</name><priority>2</priority><guaranteed-rate>{GOLD_GUARANTEE}</guaranteed-rate></class>
<class><name>bronze</name><priority>1</priority></class>
<class><name>capped</name><priority>1</priority><quota><bits>1024</bits><period>3600</period></quota></class>
<application-pair><sae-a>sae-q1-hi</sae-a><sae-b>sae-q2-hi</sae-b><class>gold</class></application-pair>
<application-pair><sae-a>sae-q2-lo</sae-a><sae-b>sae-q1-hi</sae-b><class>capped</class></application-pair>
<default-class>bronze</default-class>
</qos></key-manager></qkd_node>"#
    )
}

fn keys(number: u32) -> KeyRequest {
    KeyRequest {
        number: Some(number),
        size: Some(256),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_higher_class_gets_its_guarantee_and_quotas_hold() {
    let bed = Bed::up_text(TOPOLOGY);
    bed.wait_path(&["q1", "q2"], 16).await;
    let nc = bed.netconf("q1").await;

    // an invalid policy (a pair naming no class) is refused whole and changes nothing
    let bad = policy().replace(
        "<default-class>bronze</default-class>",
        "<default-class>silver</default-class>",
    );
    assert!(nc.edit_config("running", &bad).await.is_err());
    let unset = policy().replace("<default-class>bronze</default-class>", "");
    let refused = nc.edit_config("running", &unset).await.unwrap_err();
    assert!(refused.to_string().contains("default class"), "{refused}");
    nc.edit_config("running", &policy()).await.unwrap();

    // the quota: 1024 bits per hour for hi -> q2-lo
    let capped = bed.client("sae-q1-hi");
    let hour = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 3600
    };
    let charged_in = hour();
    capped.enc_keys("sae-q2-lo", &keys(4)).await.unwrap();
    match capped.enc_keys("sae-q2-lo", &keys(1)).await {
        Err(ClientError::Kme { status, body }) => {
            assert_eq!(status, 503);
            assert_eq!(body.message, "keys cannot be supplied now");
            let details = serde_json::to_string(&body.details).unwrap();
            assert!(details.contains("quota"), "{details}");
            assert!(details.contains("capped"), "{details}");
        }
        other => panic!(
            "expected the quota refusal, got {:?}",
            other.map(|k| k.keys.len())
        ),
    }
    let state = nc
        .get(Some(
            r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><key-manager xmlns="urn:qkdni:yang:qkdni-km"><qos/></key-manager></qkd_node>"#,
        ))
        .await
        .unwrap();
    assert!(
        state.contains("<quota-used-bits>1024</quota-used-bits>"),
        "{state}"
    );
    assert!(
        state.contains("<refused-quota>1</refused-quota>"),
        "{state}"
    );

    // two pairs of two classes draw keys continuously until
    // the link has delivered enough key to measure shares (well beyond the pool's content)
    let target_bits: u64 = 120_000;
    let gold = Arc::new(AtomicU64::new(0));
    let bronze = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut drawers = Vec::new();
    // the emulated link brings key in frames (every 200 ms, 4 requests' worth): six
    // requests in flight per pair keep more waiting than a frame serves, so the scheduler,
    // not the arrival order, decides who gets each frame
    let pairs = [
        ("sae-q1-hi", "sae-q2-hi", gold.clone()),
        ("sae-q1-lo", "sae-q2-lo", bronze.clone()),
    ];
    for (master, slave, counter) in pairs.iter().flat_map(|p| std::iter::repeat_n(p.clone(), 6)) {
        let client = bed.client(master);
        let (stop, gold, bronze) = (stop.clone(), gold.clone(), bronze.clone());
        drawers.push(tokio::spawn(async move {
            let mut refused = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match client.enc_keys(slave, &keys(4)).await {
                    Ok(container) => {
                        counter.fetch_add(256 * container.keys.len() as u64, Ordering::Relaxed);
                    }
                    // key scarce: no turn within the wait, try again
                    Err(ClientError::Kme { status: 503, .. }) => refused += 1,
                    Err(other) => panic!("{other}"),
                }
                if gold.load(Ordering::Relaxed) + bronze.load(Ordering::Relaxed) >= target_bits {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            refused
        }));
    }
    let all = futures::future::join_all(drawers);
    // bounded: the link delivers 20 480 key bits/s, so the target takes ~6 s when idle
    let done = tokio::time::timeout(Duration::from_secs(90), all).await;
    stop.store(true, Ordering::Relaxed);
    let refused: u64 = done
        .expect("the drawers reached the target")
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    let (g, b) = (gold.load(Ordering::Relaxed), bronze.load(Ordering::Relaxed));
    let total = g + b;
    // the link carries 25 600 bit/s of blocks, 20 480 of them key bits (one MAC block per
    // 4 keys): gold's guarantee is 58 % of that; allow for the pool's first content, served
    // in arrival order before key became scarce
    let guarantee_share = GOLD_GUARANTEE as f64 / 20_480.0;
    let share = g as f64 / total as f64;
    eprintln!("gold {g} bits, bronze {b} bits, gold share {share:.3}, {refused} refused");
    assert!(
        share >= guarantee_share - 0.08,
        "gold got {share:.3} of the key, below its guaranteed share {guarantee_share:.3}"
    );
    assert!(
        b as f64 >= total as f64 * 0.04,
        "bronze starved: {b} of {total} bits"
    );
    let state = nc
        .get(Some(
            r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><key-manager xmlns="urn:qkdni:yang:qkdni-km"><qos/></key-manager></qkd_node>"#,
        ))
        .await
        .unwrap();
    assert!(state.contains("<name>gold</name>"), "{state}");

    // a crash does not renew the quota: q1 killed (SIGKILL) and started again, the policy
    // (re)applied by the operator, the capped pair is still refused in the same period
    drop(nc);
    bed.cli(&["node", "stop", "q1", "--kill"]);
    bed.cli(&["node", "start", "q1"]);
    let nc = bed.netconf("q1").await;
    nc.edit_config("running", &policy()).await.unwrap();
    if hour() != charged_in {
        // the quota's period (an hour, in fixed windows) ended meanwhile: renewed, rightly
        eprintln!("the quota period ended during the test: restart check skipped");
        return;
    }
    match capped.enc_keys("sae-q2-lo", &keys(1)).await {
        Err(ClientError::Kme { status, body }) => {
            assert_eq!(status, 503);
            let details = serde_json::to_string(&body.details).unwrap();
            assert!(details.contains("quota"), "{details}");
            assert!(details.contains("\"quota_used_bits\":1024"), "{details}");
        }
        other => panic!(
            "expected the quota refusal after the restart, got {:?}",
            other.map(|k| k.keys.len())
        ),
    }
    let state = nc
        .get(Some(
            r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><key-manager xmlns="urn:qkdni:yang:qkdni-km"><qos/></key-manager></qkd_node>"#,
        ))
        .await
        .unwrap();
    assert!(
        state.contains("<quota-used-bits>1024</quota-used-bits>"),
        "{state}"
    );
}

/// Kxi-1' transfers take their class's turn like relay hops: at KM-A of an interworking
/// node, keys for QKDN B's SAEs are of the peer domain B's class, whose quota holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kxi_transfers_take_their_class_turn_and_quota() {
    let bed = Bed::up("two-domain-iwn.toml");
    bed.wait_path(&["a1", "a2", "iwn1-a", "iwn1-b", "b2", "b1"], 16)
        .await;
    let policy = r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><key-manager xmlns="urn:qkdni:yang:qkdni-km"><qos>
<class><name>peer-b</name><priority>1</priority><quota><bits>512</bits><period>3600</period></quota></class>
<class><name>rest</name><priority>1</priority></class>
<peer-domain><domain>B</domain><class>peer-b</class></peer-domain>
<default-class>rest</default-class>
</qos></key-manager></qkd_node>"#;
    let nc = bed.netconf("iwn1-a").await;
    nc.edit_config("running", policy).await.unwrap();
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
    match bed.client("sae-a1-1").enc_keys("sae-b1-1", &keys(1)).await {
        Err(ClientError::Kme { status, .. }) => assert_eq!(status, 503),
        other => panic!(
            "expected a refusal at the IWN, got {:?}",
            other.map(|k| k.keys.len())
        ),
    }
    let state = nc
        .get(Some(
            r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><key-manager xmlns="urn:qkdni:yang:qkdni-km"><qos/></key-manager></qkd_node>"#,
        ))
        .await
        .unwrap();
    assert!(
        state.contains("<quota-used-bits>512</quota-used-bits>"),
        "{state}"
    );
    assert!(
        state.contains("<refused-quota>1</refused-quota>"),
        "{state}"
    );
}
