//! The Kxi-2' state machine on a real agent and store (no peer running): what a restart
//! does to transfers left in flight, what KM-B answers for each phase, and the local
//! withdrawal of keys delivered at KM-B itself.

use std::sync::Arc;

use uuid::Uuid;
use zeroize::Zeroizing;

use super::messages::{AckStatus, RelayStatus, VoidContainer};
use crate::km::agent::Agent;
use crate::km::events::{Event, TransferRole, TransferState};
use crate::km::store::{DeliveryTerms, Phase, Side, TransferRecord};
use crate::pki::{Authority, Role};

const PEER: &str = "iwn1-a@A";

/// KM-B of an IWN (`iwn1-b`, QKDN B) with its transfer link to KM-A, in `dir`.
fn agent(dir: &std::path::Path) -> Arc<Agent> {
    let own = Authority::new("B").unwrap();
    let peer = Authority::new("A").unwrap();
    let issued = own.issue_to(dir, "iwn1-b", "iwn1-b", Role::Node).unwrap();
    std::fs::write(dir.join("b-ca.crt"), own.cert_pem()).unwrap();
    std::fs::write(dir.join("a-ca.crt"), peer.cert_pem()).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let text = format!(
        r#"
node = "iwn1-b"
domain = "B"
data_dir = "{data}"
etsi014_listen = "{etsi}"
kma_listen = "{kma}"
[tls]
cert = "{cert}"
key = "{key}"
ca = ["{ca}"]
peer_cas = [{{ domain = "A", cert = "{peer_ca}" }}]
[[links]]
id = "iwn1-kxi1p"
peer = "iwn1-a"
peer_kma = "https://{nobody}"
end = "tx"
peer_domain = "A"
kind = "transfer"
[saes]
sae-b9 = "iwn1-b"
"#,
        data = dir.join("data").display(),
        etsi = free(),
        kma = free(),
        nobody = free(),
        cert = issued.cert.display(),
        key = issued.key.display(),
        ca = dir.join("b-ca.crt").display(),
        peer_ca = dir.join("a-ca.crt").display(),
    );
    Agent::new(toml::from_str(&text).unwrap()).unwrap()
}

fn record(phase: Phase, at_ms: u64, dest: &str) -> TransferRecord {
    TransferRecord {
        relay_id: Uuid::new_v4(),
        link: "iwn1-kxi1p".into(),
        peer: PEER.into(),
        key_ids: vec![Uuid::new_v4(), Uuid::new_v4()],
        key_size: 256,
        master_sae: "sae-a1".into(),
        slave_saes: vec!["sae-b9".into()],
        dest_km: dest.into(),
        phase,
        at_ms,
        next_links: Vec::new(),
    }
}

/// Records `r` and, when it was delivered here, its keys for the slave SAE.
fn put(agent: &Agent, side: Side, r: &TransferRecord) {
    agent
        .store
        .write(|t| {
            t.put_transfer(side, r)?;
            if side == Side::Received && r.dest_km == "iwn1-b" {
                let entries: Vec<(Uuid, Zeroizing<Vec<u8>>)> = r
                    .key_ids
                    .iter()
                    .map(|k| (*k, Zeroizing::new(vec![7u8; 32])))
                    .collect();
                let terms = DeliveryTerms {
                    expires_ms: u64::MAX,
                    max_per_pair: 1000,
                };
                t.insert_deliveries(&r.slave_saes, &r.master_sae, &entries, terms)?;
            }
            Ok(())
        })
        .unwrap();
}

fn phase(agent: &Agent, side: Side, id: Uuid) -> Phase {
    agent.store.transfer(side, id).unwrap().unwrap().phase
}

fn void_of(r: &TransferRecord) -> VoidContainer {
    VoidContainer {
        key_ids: r.key_ids.clone(),
        initiator_sae_id: r.master_sae.clone(),
        target_sae_ids: r.slave_saes.clone(),
        ack_callback_url: None,
        extension: None,
        all_confirmation: None,
    }
}

#[tokio::test]
async fn a_restart_voids_what_an_earlier_run_left_in_flight_and_nothing_newer() {
    let dir = crate::km::store::test_dir();
    let agent = agent(&dir.path);
    let mut events = agent.events();
    let started = 10_000;
    let sent_before = record(Phase::InFlight, started - 1, "b1");
    let received_before = record(Phase::InFlight, started - 1, "iwn1-b");
    let received_now = record(Phase::InFlight, started + 1, "iwn1-b");
    put(&agent, Side::Sent, &sent_before);
    put(&agent, Side::Received, &received_before);
    put(&agent, Side::Received, &received_now);
    let task = tokio::spawn(super::settle::run(agent.clone(), started));
    // KM-B's own withdrawal needs nobody: the keys it delivered here go at once
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while phase(&agent, Side::Received, received_before.relay_id) != Phase::Voided {
        assert!(tokio::time::Instant::now() < deadline, "never voided");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // KM-A's void waits for a KM-B that does not answer: pending, kept
    assert_eq!(
        phase(&agent, Side::Sent, sent_before.relay_id),
        Phase::VoidPending
    );
    assert_eq!(
        phase(&agent, Side::Received, received_now.relay_id),
        Phase::InFlight
    );
    task.abort();
    let taken = agent
        .store
        .write(|t| t.take_deliveries("sae-b9", "sae-a1", &received_before.key_ids, 1, 0));
    assert!(taken.is_err(), "the voided keys are gone");
    let kept = agent
        .store
        .write(|t| t.take_deliveries("sae-b9", "sae-a1", &received_now.key_ids, 1, 0))
        .unwrap();
    assert_eq!(kept.len(), 2);
    let event = loop {
        if let Event::KeyTransfer(t) = events.recv().await.unwrap() {
            break t;
        }
    };
    assert_eq!(
        (event.relay_id, event.role, event.state),
        (
            received_before.relay_id,
            TransferRole::Receiver,
            TransferState::Voided
        )
    );
}

#[tokio::test]
async fn km_b_answers_status_and_void_from_the_record() {
    let dir = crate::km::store::test_dir();
    let agent = agent(&dir.path);
    let mut events = agent.events();
    let relayed = record(Phase::Relayed, 1, "iwn1-b");
    let failed = record(Phase::Failed, 1, "b1");
    let in_flight = record(Phase::InFlight, 1, "b1");
    for r in [&relayed, &failed, &in_flight] {
        put(&agent, Side::Received, r);
    }
    let status = |id| {
        let agent = agent.clone();
        async move { super::settle::status(&agent, PEER, id).await.unwrap() }
    };
    assert_eq!(
        status(relayed.relay_id).await,
        Some((RelayStatus::Relayed, relayed.key_ids.clone()))
    );
    assert_eq!(
        status(in_flight.relay_id).await.unwrap().0,
        RelayStatus::InProgress
    );
    // another caller learns nothing
    assert_eq!(
        super::settle::status(&agent, "a2@A", relayed.relay_id)
            .await
            .unwrap(),
        None
    );
    // a transfer in flight is voided again later; nothing changes
    let busy = super::settle::void(&agent, PEER, &void_of(&in_flight)).await;
    assert_eq!(busy.unwrap_err().status, 503);
    assert_eq!(
        phase(&agent, Side::Received, in_flight.relay_id),
        Phase::InFlight
    );
    // a failed one is simply voided
    let answer = super::settle::void(&agent, PEER, &void_of(&failed))
        .await
        .unwrap();
    assert!(answer.iter().all(|(_, s)| *s == AckStatus::Voided));
    // a relayed one whose slave SAE fetched a key: failed to void, loudly
    agent
        .store
        .write(|t| t.take_deliveries("sae-b9", "sae-a1", &relayed.key_ids[..1], 1, 1_000))
        .unwrap();
    let answer = super::settle::void(&agent, PEER, &void_of(&relayed))
        .await
        .unwrap();
    assert!(answer.iter().all(|(_, s)| *s == AckStatus::FailedToVoid));
    assert_eq!(
        phase(&agent, Side::Received, relayed.relay_id),
        Phase::FailedToVoid
    );
    let mut saw_failure = false;
    while let Ok(event) = events.try_recv() {
        if let Event::RelayFailure {
            relay_id, reason, ..
        } = event
        {
            saw_failure |= relay_id == relayed.relay_id && reason.contains("failed to void");
        }
    }
    assert!(saw_failure);
    // voided again: the same answer, nothing withdrawn twice
    let again = super::settle::void(&agent, PEER, &void_of(&relayed))
        .await
        .unwrap();
    assert!(again.iter().all(|(_, s)| *s == AckStatus::FailedToVoid));
    // another caller's void touches nothing of this peer's transfers
    let stranger = super::settle::void(&agent, "a2@A", &void_of(&failed))
        .await
        .unwrap();
    assert!(stranger.is_empty());
}
