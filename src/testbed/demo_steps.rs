//! What both demos do: call the domain controller as the orchestrator, open an SAE's ETSI 014
//! client, deliver keys between two SAEs, read a session's route.

use std::time::Duration;

use anyhow::bail;

use super::endpoints::Endpoints;
use crate::etsi014::{self, KeyRequest};

pub(super) fn client(endpoints: &Endpoints, sae: &str) -> anyhow::Result<etsi014::Client> {
    Ok(endpoints.etsi014_client(sae, Duration::from_secs(15))?)
}

/// The orchestrator's view of the domain controller.
pub(super) struct Orchestrator {
    pub(super) http: reqwest::Client,
    pub(super) rest: String,
    pub(super) token: String,
}

impl Orchestrator {
    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.rest))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let value: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("controller answered {status}: {}", value["detail"]);
        }
        Ok(value)
    }
}

pub(super) fn route_of(session: &serde_json::Value) -> Vec<String> {
    session["path"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) async fn deliver(
    alice: &etsi014::Client,
    bob: &etsi014::Client,
    master: &str,
    slave: &str,
    number: u32,
) -> anyhow::Result<()> {
    let request = KeyRequest {
        number: Some(number),
        size: Some(256),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let issued = alice.enc_keys(slave, &request).await?;
    let elapsed = started.elapsed();
    let ids: Vec<String> = issued.keys.iter().map(|k| k.key_ID.clone()).collect();
    let fetched = bob.dec_keys(master, &ids).await?;
    let same = issued
        .keys
        .iter()
        .zip(&fetched.keys)
        .all(|(a, b)| a.key_ID == b.key_ID && a.key == b.key);
    println!(
        "   {master} got {} keys in {:.1} ms:",
        ids.len(),
        elapsed.as_secs_f64() * 1e3
    );
    for id in &ids {
        println!("     key_ID {id}");
    }
    println!(
        "   {slave} fetched the same IDs: key material identical at both ends: {}",
        if same { "yes" } else { "NO" }
    );
    if !same {
        bail!("key material differs between master and slave");
    }
    Ok(())
}
