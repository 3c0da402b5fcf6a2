//! `qkdni ctl`: a thin terminal client of a controller's northbound REST API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::testbed::endpoints::Endpoints;
use crate::tls;

/// Where the controller is and how to authenticate.
#[derive(Debug, Args)]
pub struct Target {
    /// A testbed directory: the controller, token and CA come from its endpoints.json.
    #[arg(long, conflicts_with = "url")]
    pub endpoints: Option<PathBuf>,
    /// Domain of the controller (with --endpoints).
    #[arg(long, default_value = "A")]
    pub domain: String,
    /// Base URL of the controller (`https://host:port`).
    #[arg(long, requires_all = ["token", "ca"])]
    pub url: Option<String>,
    /// Bearer token (with --url).
    #[arg(long)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the controller's certificate (with --url).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Print the API's JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Nodes, links and SAEs.
    Topology,
    /// QKD links with their live state.
    Links,
    /// Relay routes installed on every KM.
    Routes,
    /// Recent controller events.
    Events,
    /// The live web dashboard's URL and a one-time login link (valid once, for 10 minutes).
    Dashboard,
    /// Key supply sessions.
    Sessions {
        #[command(subcommand)]
        action: SessionAction,
    },
}

/// Session subcommands.
#[derive(Debug, Subcommand)]
pub enum SessionAction {
    List,
    /// Create a session between a master and a slave SAE.
    Create {
        master_sae: String,
        slave_sae: String,
        #[arg(long, default_value_t = 0.0)]
        rate_bps: f64,
    },
    Show {
        id: String,
    },
    Delete {
        id: String,
    },
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(target: &Target) -> anyhow::Result<Self> {
        let (base, token, ca, identity) = match (&target.endpoints, &target.url) {
            (Some(dir), _) => {
                let endpoints = Endpoints::load(dir)?;
                let c = endpoints
                    .controller(&target.domain)
                    .with_context(|| format!("domain {} has no controller", target.domain))?;
                (
                    c.rest.clone(),
                    c.token.clone(),
                    endpoints.ca_cert.clone(),
                    Some(endpoints.operator_tls()),
                )
            }
            (None, Some(url)) => (
                url.clone(),
                target.token.clone().unwrap_or_default(),
                target.ca.clone().unwrap_or_default(),
                None,
            ),
            (None, None) => bail!("name the controller with --endpoints DIR or --url/--token/--ca"),
        };
        let http = match identity {
            Some(files) => tls::https_client(&files, Duration::from_secs(30))?,
            None => tls::https_client_trusting(&[ca], Duration::from_secs(30))?,
        };
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        if !status.is_success() {
            bail!("{status}: {}", value["detail"].as_str().unwrap_or(&text));
        }
        Ok(value)
    }
}

fn session_line(s: &Value) -> String {
    let path: Vec<&str> = s["path"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "{}  {} -> {}  {}  {}",
        s["id"].as_str().unwrap_or_default(),
        s["master_sae"].as_str().unwrap_or_default(),
        s["slave_sae"].as_str().unwrap_or_default(),
        s["state"].as_str().unwrap_or_default(),
        path.join(" > ")
    )
}

/// Turns an API answer into lines for a terminal.
type Summary = Box<dyn Fn(&Value) -> String>;

/// Runs a ctl command.
pub fn run(target: Target, command: CtlCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let api = Api::new(&target)?;
        use reqwest::Method;
        let (value, summary): (Value, Summary) = match command {
            CtlCommand::Topology => (
                api.call(Method::GET, "/api/v1/topology", None).await?,
                Box::new(|v: &Value| {
                    format!(
                        "{} nodes, {} links, {} SAEs",
                        v["nodes"].as_object().map_or(0, |m| m.len()),
                        v["links"].as_object().map_or(0, |m| m.len()),
                        v["saes"].as_object().map_or(0, |m| m.len())
                    )
                }),
            ),
            CtlCommand::Links => (
                api.call(Method::GET, "/api/v1/links", None).await?,
                Box::new(|v: &Value| {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| {
                            format!(
                                "{:<10} {:<4} {:>14.0} bit/s",
                                l["id"].as_str().unwrap_or_default(),
                                if l["up"] == true { "up" } else { "down" },
                                l["rate_bps"].as_f64().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                }),
            ),
            CtlCommand::Routes => (api.call(Method::GET, "/api/v1/routes", None).await?, Box::new(|v: &Value| {
                let mut lines = Vec::new();
                for (node, table) in v.as_object().into_iter().flatten() {
                    for (dest, hop) in table.as_object().into_iter().flatten() {
                        lines.push(format!("{node}: to {dest} via {}", hop.as_str().unwrap_or_default()));
                    }
                }
                lines.join("\n")
            })),
            CtlCommand::Events => (api.call(Method::GET, "/api/v1/events", None).await?, Box::new(|v: &Value| {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| format!("{} {:<15} {}", e["time"].as_str().unwrap_or_default(), e["kind"].as_str().unwrap_or_default(), e["detail"].as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })),
            CtlCommand::Dashboard => {
                let mut login = api.call(Method::POST, "/api/v1/dashboard/logins", None).await?;
                let url = |path: &Value| format!("{}{}", api.base, path.as_str().unwrap_or_default());
                login["dashboard_url"] = Value::String(url(&login["dashboard_path"]));
                login["login_url"] = Value::String(url(&login["login_path"]));
                (login, Box::new(|v: &Value| {
                    format!(
                        "dashboard: {}\none-time login (valid once, {} s): {}",
                        v["dashboard_url"].as_str().unwrap_or_default(),
                        v["expires_in_seconds"],
                        v["login_url"].as_str().unwrap_or_default()
                    )
                }))
            }
            CtlCommand::Sessions { action } => match action {
                SessionAction::List => (api.call(Method::GET, "/api/v1/sessions", None).await?, Box::new(|v: &Value| {
                    v.as_array().into_iter().flatten().map(session_line).collect::<Vec<_>>().join("\n")
                })),
                SessionAction::Create { master_sae, slave_sae, rate_bps } => (
                    api.call(
                        Method::POST,
                        "/api/v1/sessions",
                        Some(serde_json::json!({"master_sae": master_sae, "slave_sae": slave_sae, "rate_bps": rate_bps})),
                    )
                    .await?,
                    Box::new(session_line),
                ),
                SessionAction::Show { id } => (api.call(Method::GET, &format!("/api/v1/sessions/{id}"), None).await?, Box::new(|v: &Value| {
                    let mut text = session_line(v);
                    for h in v["history"].as_array().into_iter().flatten() {
                        text.push_str(&format!("\n  {} {}", h["time"].as_str().unwrap_or_default(), h["what"].as_str().unwrap_or_default()));
                    }
                    text
                })),
                SessionAction::Delete { id } => {
                    api.call(Method::DELETE, &format!("/api/v1/sessions/{id}"), None).await?;
                    (Value::Null, Box::new(move |_: &Value| format!("session {id} deleted")))
                }
            },
        };
        if target.json {
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!("{}", summary(&value));
        }
        Ok(())
    })
}
