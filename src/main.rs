//! `dml`: the command line of the distributed inference cluster. Every subcommand is a
//! thin edge over the `dml-actors` and `dml-models` crates; errors become one line on
//! stderr and a non-zero exit code (2 for configuration errors).

mod console;
mod ctl;
mod demo;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dml_actors::config::ConfigError;
use dml_models::cli as models_cli;
use dml_models::Precision;

#[derive(Parser)]
#[command(
    name = "dml",
    version,
    about = "Distributed ML inference cluster (ResNet50, InceptionV3)"
)]
struct Cli {
    /// Log lines as text, or as one JSON object per line (for log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// `dml --version`: the crate's version and the wire protocol it speaks (nodes of
/// different protocol versions refuse each other's handshakes).
fn version() -> &'static str {
    let v = format!(
        "{} (wire protocol {})",
        env!("CARGO_PKG_VERSION"),
        dml_actors::net::wire::PROTOCOL_VERSION
    );
    Box::leak(v.into_boxed_str())
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// Deployment configuration file.
    #[arg(long, default_value = "config.toml", global = true)]
    config: PathBuf,
    /// Override a config key, e.g. --set failure_detector.ping_timeout=0.5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the introducer (admits joiners, hands out the member list).
    Introducer {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Run one node in the foreground (interactive console when stdin is a terminal).
    Node {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        port: u16,
        /// Never start the interactive console.
        #[arg(long)]
        no_console: bool,
        /// Serve HTTP (KServe v2 inference, /metrics) on IP:PORT; wins over the node's
        /// `http` in the config.
        #[arg(long, value_name = "IP:PORT")]
        http: Option<std::net::SocketAddr>,
        /// Benchmark only (`dml bench scale`): fixed logits instead of the networks.
        #[arg(long, hide = true)]
        bench_fixed_logits: bool,
        /// Serve synthetic weights (meaningless labels) for a model that has no local
        /// file and nothing published, instead of not serving it
        /// (`inference.synthetic_weights`).
        #[arg(long)]
        synthetic_weights: bool,
    },
    /// The main job in one command: local cluster, sample images into SDFS, a ResNet50
    /// and an InceptionV3 job side by side with live C1/C2/C5, the results, shutdown.
    Demo {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[command(flatten)]
        args: demo::Args,
    },
    /// Start the introducer and every node of the config on this machine; Ctrl-C stops all.
    Up {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Run one console command against a running node.
    Ctl {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// The node to ask, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:8001")]
        node: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// C4: return once the job is accepted instead of following it to the end.
        #[arg(long)]
        detach: bool,
        /// Give up the whole command after SECS (a C4 keeps running; exit code 3).
        #[arg(long, value_name = "SECS")]
        deadline: Option<f64>,
        /// The operator credential to prove (a `NAME HEX_KEY` file), instead of the
        /// config's `[ctl] credential_file`.
        #[arg(long)]
        credential: Option<PathBuf>,
        /// The command and its arguments (see `dml ctl help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Fetch or synthesise model weights.
    Weights {
        #[command(subcommand)]
        what: WeightsCmd,
        #[arg(long, default_value = "weights", global = true)]
        dir: PathBuf,
    },
    /// Classify every image in a directory in this process.
    Classify {
        #[arg(long, default_value = "resnet50")]
        model: String,
        #[arg(long, default_value = "weights")]
        weights: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// What the convolutions compute in: fp32, bf16 or int8 (see README).
        #[arg(long, default_value = "fp32", value_parser = parse_precision)]
        precision: Precision,
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Print a shell completion script (e.g. `dml completions bash >
    /// /etc/bash_completion.d/dml`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum WeightsCmd {
    /// Download torchvision's ImageNet weights from the Hugging Face Hub (needs internet).
    Fetch,
    /// Write deterministic synthetic weights (labels are meaningless).
    Synth {
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Check FILE (.safetensors or .pth) against MODEL's network, store it in SDFS under
    /// its SHA-256 and make it the model's next (active) version on every node.
    Publish {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[command(flatten)]
        target: TargetArgs,
        model: String,
        file: PathBuf,
    },
    /// The published versions of every model (or of MODEL): hash, size, which is active.
    List {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[command(flatten)]
        target: TargetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        model: Option<String>,
    },
}

#[derive(clap::Args, Clone)]
struct TargetArgs {
    /// The node to ask, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8001")]
    node: String,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
}

impl TargetArgs {
    fn target(&self, cfg: &ConfigArgs) -> anyhow::Result<dml_cluster::weights::Target> {
        let config = dml_actors::config::load(&cfg.config, &cfg.set)?;
        Ok(dml_cluster::weights::Target {
            addr: self.node.clone(),
            cred: config.tool_credential()?,
            connect: std::time::Duration::from_secs(5),
            reply: std::time::Duration::from_secs_f64(self.timeout.clamp(0.1, 86_400.0)),
        })
    }
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Forward-pass speed of both networks at batch 1 and 8, in img/s and GFLOP/s.
    Models {
        #[arg(long, default_value = "weights")]
        weights: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batches: Vec<usize>,
        /// Precisions to measure (fp32, bf16, int8), comma-separated; default: fp32 and
        /// every precision this CPU has a path for.
        #[arg(long, value_delimiter = ',', value_parser = parse_precision)]
        precision: Vec<Precision>,
        /// Also measure every other kernel combination (portable, no Winograd, no AMX),
        /// one line each, to show what each step brings.
        #[arg(long)]
        all_kernels: bool,
        /// Instead of timing, serve single passes for an outside harness
        /// (tools/reference/interleave.py): each stdin line `<network> <batch>
        /// [precision]` runs one forward pass and prints its seconds.
        #[arg(long, conflicts_with = "all_kernels")]
        passes_from_stdin: bool,
    },
    /// The inference assignment's measurements: fair split, second-job start, recovery
    /// after worker and coordinator crashes, cluster overhead.
    Idunno {
        #[command(flatten)]
        args: dml_bench::idunno::Args,
    },
    /// An inference job over thousands of images under two waves of kill -9 (coordinator,
    /// then new coordinator and standby); checks every result afterwards.
    JobsChurn {
        #[command(flatten)]
        args: dml_bench::jobs_churn::Args,
    },
    /// Ping round-trip times of the failure detector, idle and with every node running
    /// inference at full speed (goal: p99 within 50 ms).
    Pings {
        #[command(flatten)]
        args: dml_bench::pings::Args,
    },
    /// Failure detection and removal times, and background bytes per node.
    Cluster {
        #[command(flatten)]
        args: dml_bench::cluster::Args,
    },
    /// Jepsen-style soak of SDFS: clients and a seeded nemesis (kill -9, restart,
    /// SIGSTOP/SIGCONT, partitions, waves of up to m failures) against a local cluster; a checker
    /// proves every acknowledged file readable byte-exact. Non-zero exit on a violation.
    Chaos {
        #[command(flatten)]
        args: dml_bench::chaos::Args,
    },
    /// Online inference through the KServe v2 endpoint of a local cluster: requests/s and
    /// p50/p99 latency at 1, 8 and 32 concurrent clients, next to `dml bench models`.
    Serve {
        #[command(flatten)]
        args: dml_bench::serve::Args,
    },
    /// Jobs of 10k, 100k and 1M queries (inputs in tar archives) on a local cluster whose
    /// models return fixed logits: scheduling throughput, coordinator memory per query,
    /// result objects, results export rate and the exporting client's memory.
    Scale {
        #[command(flatten)]
        args: dml_bench::scale::Args,
    },
    /// Published weights: time to roll a ~100 MB file out to every node, and a running
    /// job's throughput while a new version is published and loaded.
    Weights {
        #[command(flatten)]
        args: dml_bench::weights::Args,
    },
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`dml ctl store | head`) made
/// `println!` panic. `dml ctl` should end quietly instead, as Unix filters do. Only
/// `ctl`: a node or `dml up` must never die of a peer's or a reader's closed pipe.
fn restore_sigpipe() {
    // SAFETY: called first thing in `main`, before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().version(version()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    LOG_FORMAT.get_or_init(|| cli.log_format);
    if matches!(cli.cmd, Cmd::Ctl { .. }) {
        restore_sigpipe();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = if e.downcast_ref::<ConfigError>().is_some() {
                2
            } else {
                1
            };
            eprintln!("dml: {}", one_line(&e));
            ExitCode::from(code)
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    // Many errors already print their source; skip a cause the line already says.
    let mut line = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !line.contains(&cause) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&cause);
        }
    }
    line.replace('\n', " ")
}

/// `--log-format`, for [`init_logs`].
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LOG_FORMAT.get() {
        Some(LogFormat::Json) => builder.json().try_init(),
        _ => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// `--precision` values: the one-line error lists the choices.
fn parse_precision(s: &str) -> Result<Precision, String> {
    Precision::parse(s)
}

/// `dml classify`: the results on stdout, progress on stderr, and exit code 1 with the
/// failed files' names on stderr when any image failed.
fn classify(
    model: &str,
    weights: &std::path::Path,
    dir: &std::path::Path,
    threads: usize,
    precision: Precision,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use dml_cluster::progress::{Mode, Progress};
    let mut progress: Option<Progress> = None;
    let done = models_cli::classify(
        model,
        weights,
        dir,
        threads,
        precision,
        json,
        &mut |n, failed, total| {
            let p = progress
                .get_or_insert_with(|| Progress::new("classify", total as u64, Mode::detect()));
            p.update(n as u64, failed as u64);
        },
    )?;
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    if done.failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "dml: {} of {} images failed (errors above, on stdout):",
        done.failed.len(),
        done.total
    );
    for name in &done.failed {
        eprintln!("  {name}");
    }
    Ok(ExitCode::from(1))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Introducer { cfg } => {
            let config = dml_actors::config::load(&cfg.config, &cfg.set)?;
            init_logs();
            dml_actors::node::run_introducer(config)?;
        }
        Cmd::Node {
            cfg,
            hostname,
            port,
            no_console,
            http,
            bench_fixed_logits,
            synthetic_weights,
        } => {
            let mut config = dml_actors::config::load(&cfg.config, &cfg.set)?;
            config.synthetic_weights |= synthetic_weights;
            let addr = dml_actors::types::NodeAddr::new(&hostname, port);
            if config.node(&addr).is_none() {
                return Err(ConfigError {
                    key: "--hostname/--port".into(),
                    msg: format!(
                        "unknown node {addr}: not in [[nodes]] of {}",
                        cfg.config.display()
                    ),
                }
                .into());
            }
            if let Some(http) = http {
                for n in config.nodes.iter_mut().filter(|n| n.addr == addr) {
                    n.http = Some(http);
                }
            }
            init_logs();
            let interactive = !no_console && console::stdin_is_terminal();
            let console = interactive.then(|| console::spawn(config.clone(), addr.clone()));
            let models = if bench_fixed_logits {
                dml_actors::node::Models::BenchFixedLogits
            } else {
                dml_actors::node::Models::Networks
            };
            dml_actors::node::run_node(config, addr, models)?;
            drop(console);
        }
        Cmd::Demo { cfg, args } => {
            init_logs();
            let config = dml_actors::config::load(&cfg.config, &cfg.set)?;
            demo::run(&cfg.config, &cfg.set, &config, &args)?;
        }
        Cmd::Up { cfg } => {
            init_logs();
            let config = dml_actors::config::load(&cfg.config, &cfg.set)?;
            up::run(&cfg.config, &cfg.set, &config)?;
        }
        Cmd::Ctl {
            cfg,
            node,
            json,
            timeout,
            detach,
            deadline,
            credential,
            command,
        } => {
            let mut config = dml_actors::config::load(&cfg.config, &cfg.set)?;
            if let Some(file) = credential {
                // Relative to where the operator typed it, not to the config file.
                config.credential_file = Some(std::path::absolute(&file)?);
            }
            let opts = ctl::Opts {
                json,
                timeout,
                detach,
                deadline,
            };
            return ctl::run(&config, &node, &opts, &command);
        }
        Cmd::Weights { what, dir } => match what {
            WeightsCmd::Fetch => models_cli::weights_fetch(&dir)?,
            WeightsCmd::Synth { seed } => models_cli::weights_synth(&dir, seed)?,
            WeightsCmd::Publish {
                cfg,
                target,
                model,
                file,
            } => {
                let r = dml_cluster::weights::publish(&target.target(&cfg)?, &model, &file)?;
                println!(
                    "published {} v{}: sha256 {}, {} bytes (weights/{}/...); it is now active",
                    r.model, r.version, r.sha256, r.bytes, r.model
                );
            }
            WeightsCmd::List {
                cfg,
                target,
                json,
                model,
            } => {
                let models = match model {
                    Some(m) => vec![dml_models::Network::parse(&m)?],
                    None => Vec::new(),
                };
                let rows = dml_cluster::weights::list(&target.target(&cfg)?, &models)?;
                if json {
                    println!("{}", serde_json::to_string(&rows)?);
                } else {
                    println!("{}", dml_cluster::weights::list_text(&rows));
                }
            }
        },
        Cmd::Classify {
            model,
            weights,
            threads,
            precision,
            json,
            dir,
        } => {
            init_logs();
            return classify(&model, &weights, &dir, threads, precision, json);
        }
        Cmd::Bench { what } => match what {
            BenchCmd::Models {
                weights,
                threads,
                batches,
                precision,
                all_kernels,
                passes_from_stdin: false,
            } => dml_bench::models::bench_models(
                &weights,
                threads,
                &batches,
                &precision,
                all_kernels,
            )?,
            BenchCmd::Models {
                weights,
                threads,
                precision,
                ..
            } => {
                let precision = if precision.is_empty() {
                    vec![Precision::Fp32]
                } else {
                    precision
                };
                dml_bench::models::serve_passes(&weights, threads, &precision)?
            }
            BenchCmd::Cluster { args } => dml_bench::cluster::run(&args)?,
            BenchCmd::Idunno { args } => dml_bench::idunno::run(&args)?,
            BenchCmd::JobsChurn { args } => dml_bench::jobs_churn::run(&args)?,
            BenchCmd::Pings { args } => dml_bench::pings::run(&args)?,
            BenchCmd::Chaos { args } => dml_bench::chaos::run(&args)?,
            BenchCmd::Scale { args } => dml_bench::scale::run(&args)?,
            BenchCmd::Weights { args } => dml_bench::weights::run(&args)?,
            BenchCmd::Serve { args } => dml_bench::serve::run(&args)?,
        },
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "dml", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}
