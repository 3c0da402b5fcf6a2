//! The `qkdni` command: every daemon and tool of the project.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use qkdni::km::agent::Agent;
use qkdni::km::config::KmConfig;
use qkdni::km::instance;
use qkdni::quantum::link_model::LinkParams;
use qkdni::testbed;

#[derive(Parser)]
#[command(
    name = "qkdni",
    version,
    about = "SDN control plane for interworking QKD networks (ITU-T Y.3818)"
)]
struct Cli {
    /// Format of the log lines written to standard error: `text` (coloured only on a
    /// terminal) or `json` (one JSON object a line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Format of log lines.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines; ANSI colours only when standard error is a terminal.
    Text,
    /// One JSON object a line (tracing-subscriber's JSON formatter).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a key manager agent (KMA + KSA) of one QKD node.
    Km {
        /// Agent configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the QKDN controller of one domain (routing, relay routes, sessions, REST API).
    Controller {
        /// Controller configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the QKDN manager of one domain (KMLM, QLM, XLMO, QCLM; Mxi with the peer domain).
    Manager {
        /// Manager configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Talk to a controller's northbound REST API from a terminal.
    Ctl {
        #[command(flatten)]
        target: qkdni::ctl::Target,
        #[command(subcommand)]
        command: qkdni::ctl::CtlCommand,
    },
    /// Plan a QKD link: QBER and secret key rate from physical parameters (decoy-state BB84).
    LinkModel(LinkModelArgs),
    /// Emulated QKD networks on this machine.
    Testbed {
        #[command(subcommand)]
        command: testbed::cli::TestbedCommand,
    },
    /// The demonstration: bring up the embedded default testbed, deliver keys between two
    /// applications across key relays, cut a link, show what happens, shut down.
    Demo {
        /// Topology to use instead of the embedded default.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Keep the testbed directory here instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Wait for Enter before the scenario (time to open the dashboards) and keep the
        /// testbed up after it until Enter again.
        #[arg(long)]
        hold: bool,
    },
    /// A daemon's audit log: `show` its records, `verify` its hash chain (exit status 1
    /// when broken).
    Audit {
        #[command(subcommand)]
        command: qkdni::audit::cli::AuditCommand,
    },
    /// Benchmarks (`bench routing`: route policies on a random topology; prints JSON).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// Benchmarks: those of [`qkdni::bench_routing::BenchCommand`] and the link-state one.
#[derive(Subcommand)]
enum BenchCommand {
    /// The distributed control's link-state protocol on an in-memory domain: convergence
    /// after link faults, flooding at rest, one flood over HTTPS; prints the figures (one
    /// JSON object with `--json`).
    LinkState(qkdni::bench_link_state::LinkStateArgs),
    #[command(flatten)]
    Other(qkdni::bench_routing::BenchCommand),
}

#[derive(clap::Args)]
struct LinkModelArgs {
    /// Fiber length in km.
    #[arg(long, default_value_t = LinkParams::default().length_km)]
    length_km: f64,
    /// Fiber attenuation in dB/km.
    #[arg(long, default_value_t = LinkParams::default().attenuation_db_per_km)]
    attenuation_db_per_km: f64,
    /// Detection efficiency of the receiver (0..1].
    #[arg(long, default_value_t = LinkParams::default().detector_efficiency)]
    detector_efficiency: f64,
    /// Dark count probability per detector per pulse.
    #[arg(long, default_value_t = LinkParams::default().dark_count_prob)]
    dark_count_prob: f64,
    /// Optical misalignment error probability.
    #[arg(long, default_value_t = LinkParams::default().misalignment)]
    misalignment: f64,
    /// Error-correction inefficiency (>= 1).
    #[arg(long, default_value_t = LinkParams::default().ec_efficiency)]
    ec_efficiency: f64,
    /// Pulse rate of the source in Hz.
    #[arg(long, default_value_t = LinkParams::default().pulse_rate_hz)]
    pulse_rate_hz: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Logs to standard error, filtered by `QKDNI_LOG` (default `info`). The testbed sends
/// daemons' standard error to files: colour escapes are written only to a terminal.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QKDNI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.with_ansi(false).json().init(),
    }
}

/// Raises the descriptor limit of a daemon: every connection costs one, and each listener's
/// connection caps assume far more than the usual soft limit of 1 024.
fn raise_fd_limit() {
    match qkdni::conn_limit::raise_fd_limit() {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Km { config } => {
            init_tracing(cli.log_format);
            qkdni::yang::serve_only(qkdni::yang::KM_MODULES);
            qkdni::model::check(&qkdni::model::km_agent_groups())?;
            raise_fd_limit();
            let config = KmConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let agent = Agent::new(config)?;
                qkdni::km::local_control::attach(&agent, qkdni_routing::CATALOG)?;
                instance::run(agent).await
            })?;
        }
        Command::Controller { config } => {
            init_tracing(cli.log_format);
            qkdni::yang::serve_only(qkdni::yang::CONTROLLER_MODULES);
            qkdni::model::check(&qkdni::model::controller_groups())?;
            raise_fd_limit();
            let config = qkdni::control::config::ControllerConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let controller = qkdni::control::instance::start(config, qkdni_routing::CATALOG).await?;
                let mut watchers = controller.spawn_watchers();
                let mut listening = Vec::new();
                if let Some(netconf) = controller.config.netconf.clone() {
                    let operator = qkdni::control::northbound::Operator::new(controller.clone());
                    let listen = netconf.listen;
                    let server = qkdni::netconf::server::NetconfServer::new(
                        netconf,
                        std::sync::Arc::new(operator),
                    )?;
                    let listener = tokio::net::TcpListener::bind(listen)
                        .await
                        .with_context(|| format!("binding {listen}"))?;
                    listening.push(listen);
                    watchers.push(server.start_on(listener)?);
                }
                // the REST and Cxi servers load this TLS material (again) before they answer:
                // a bad one stops the controller before it reports readiness
                qkdni::tls::server_config(&controller.config.tls)?;
                qkdni::tls::Issuers::load(&controller.config.tls)?;
                let rest_listen = controller.config.rest_listen;
                let rest_listener = tokio::net::TcpListener::bind(rest_listen)
                    .await
                    .with_context(|| format!("binding {rest_listen}"))?;
                listening.push(rest_listen);
                let rest = tokio::spawn(qkdni::control::rest::serve_on(
                    controller.clone(),
                    rest_listener,
                ));
                let mut cxi = tokio::spawn(qkdni::control::cxi::server::serve(controller.clone()));
                if let Some(iw) = &controller.config.interworking {
                    // the Cxi server binds its listener itself: wait until it accepts
                    let accepting = qkdni::readiness::wait_accepting(
                        iw.cxi_listen,
                        std::time::Duration::from_secs(30),
                    );
                    tokio::select! {
                        ended = &mut cxi => anyhow::bail!("the Cxi server stopped at start: {ended:?}"),
                        accepting = accepting => accepting?,
                    }
                    listening.push(iw.cxi_listen);
                }
                if let Some(listener) = qkdni::metrics::bind(controller.config.metrics_listen)
                    .await
                    .context("binding the metrics listener")?
                {
                    listening.push(listener.local_addr()?);
                    let c = controller.clone();
                    let mut exposition = controller.metrics.exposition(Box::new(move || c.view()));
                    controller.refusals.register(&mut exposition.registry);
                    watchers.push(tokio::spawn(async move {
                        if let Err(error) =
                            qkdni::metrics::serve(listener, std::sync::Arc::new(exposition)).await
                        {
                            tracing::error!(%error, "metrics listener failed");
                        }
                    }));
                }
                qkdni::readiness::notify(&listening)?;
                qkdni::readiness::shutdown_signal().await;
                tracing::info!("controller stopping");
                rest.abort();
                cxi.abort();
                for task in watchers {
                    task.abort();
                }
                anyhow::Ok(())
            })?;
        }
        Command::Manager { config } => {
            init_tracing(cli.log_format);
            qkdni::yang::serve_only(qkdni::yang::MANAGER_MODULES);
            qkdni::model::check(&qkdni::model::manager_groups())?;
            raise_fd_limit();
            let config = qkdni::management::config::ManagerConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(qkdni::management::run(
                config,
                qkdni::readiness::shutdown_signal(),
            ))?;
        }
        Command::Audit { command } => {
            let mut out = std::io::stdout().lock();
            if !qkdni::audit::cli::run(&command, &mut out)? {
                std::process::exit(1);
            }
        }
        Command::Ctl { target, command } => qkdni::ctl::run(target, command)?,
        Command::LinkModel(args) => link_model(args)?,
        Command::Testbed { command } => {
            init_tracing(cli.log_format);
            testbed::cli::run(command)?;
        }
        Command::Demo {
            topology,
            dir,
            hold,
        } => {
            init_tracing(cli.log_format);
            testbed::demo::run(topology.as_deref(), dir.as_deref(), hold)?;
        }
        Command::Bench {
            command: BenchCommand::LinkState(args),
        } => {
            qkdni::bench_link_state::run(&args)?;
        }
        Command::Bench {
            command: BenchCommand::Other(command),
        } => qkdni::bench_routing::run(command)?,
    }
    Ok(())
}

fn link_model(args: LinkModelArgs) -> anyhow::Result<()> {
    let params = LinkParams {
        length_km: args.length_km,
        attenuation_db_per_km: args.attenuation_db_per_km,
        detector_efficiency: args.detector_efficiency,
        dark_count_prob: args.dark_count_prob,
        misalignment: args.misalignment,
        ec_efficiency: args.ec_efficiency,
        pulse_rate_hz: args.pulse_rate_hz,
    };
    let perf = params.evaluate().context("invalid link parameters")?;
    if args.json {
        let mut value = serde_json::to_value(perf)?;
        value["params"] = serde_json::to_value(params)?;
        println!("{value}");
    } else {
        println!(
            "link: {} km at {} dB/km, detector efficiency {}, dark counts {:e}/pulse, misalignment {}, f_EC {}, {:e} pulses/s",
            params.length_km,
            params.attenuation_db_per_km,
            params.detector_efficiency,
            params.dark_count_prob,
            params.misalignment,
            params.ec_efficiency,
            params.pulse_rate_hz
        );
        println!("transmittance (incl. detector): {:.3e}", perf.transmittance);
        println!("optimal signal intensity mu:    {:.3}", perf.mu);
        println!("QBER:                           {:.2} %", perf.qber * 100.0);
        println!("secret key per pulse:           {:.3e}", perf.key_per_pulse);
        println!(
            "secret key rate:                {:.1} bit/s",
            perf.secret_key_rate_bps
        );
    }
    Ok(())
}
