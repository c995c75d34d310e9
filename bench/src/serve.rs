//! `dml bench serve`: online inference through the KServe v2 endpoint of a local
//! cluster. Requests per second and p50/p99 latency at 1, 8 and 32 concurrent clients
//! (each a keep-alive HTTP/1.1 connection sending one image per request, the next as
//! soon as the answer is in), next to the model-only figures of `dml bench models` in
//! the same run, so dynamic batching's share of the model's throughput is read off
//! directly. Every client talks to the first node; the batches run on every node.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use dml_cluster::{Options, Stop, TestConfig};

use crate::stats::summarize;

/// Options of `dml bench serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Inference threads per node (the model-only figures use nodes x threads).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Concurrent clients, one level after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,
    /// Seconds of load per level (after a warm-up).
    #[arg(long, default_value_t = 20.0)]
    pub secs: f64,
    /// The model.
    #[arg(long, default_value = "resnet50")]
    pub model: String,
    /// Weight files (synthetic weights when there are none: the same speed).
    #[arg(long, default_value = "weights")]
    pub weights: PathBuf,
    /// The image every request carries.
    #[arg(long, default_value = "samples/images/rocket.jpg")]
    pub image: PathBuf,
    /// Skip the model-only figures.
    #[arg(long)]
    pub no_models: bool,
}

const TOKEN: &str = "bench-serve-token-0123456789";

/// Runs the benchmark and prints its lines.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let image = std::fs::read(&args.image)
        .with_context(|| format!("cannot read {}", args.image.display()))?;
    let total_threads = args.nodes * args.threads;
    if !args.no_models {
        println!("== model only (dml bench models), {total_threads} threads in one process ==");
        crate::models::bench_models(
            &args.weights,
            total_threads,
            &[1, 8],
            &[dml_models::Precision::Fp32],
            false,
        )?;
    }
    let dir = std::env::temp_dir().join(format!("dml-bench-serve-{}", std::process::id()));
    let weights = std::path::absolute(&args.weights)?;
    let extra = format!(
        "[inference]\nthreads = {}\nweights_dir = \"{}\"\n\n[http]\ntoken_file = \"http.token\"\n",
        args.threads,
        weights.display()
    );
    let layout = TestConfig {
        secret: "bench-serve-secret-0123456789abcdef",
        nodes: args.nodes,
        ping_duration: 0.5,
        ping_timeout: 0.3,
        cleanup_time: 1.5,
        fd_extra: "",
        extra: &extra,
    }
    .write(&dir)?;
    write_private(&dir.join("http.token"), TOKEN)?;
    let ports = dml_cluster::free_ports(args.nodes)?;
    let mut per_node = std::collections::BTreeMap::new();
    let mut https = Vec::new();
    for ((name, _), port) in layout.nodes.iter().zip(ports) {
        let http = format!("127.0.0.1:{port}");
        per_node.insert(name.clone(), vec!["--http".to_string(), http.clone()]);
        https.push(http);
    }
    let all: Vec<String> = layout.nodes.iter().map(|n| n.1.clone()).collect();
    let opts = Options {
        stop: Stop::Kill,
        own_dir: Some(dir.clone()),
        args_of: per_node,
        // Where `--weights` holds no files, the benchmark says it runs synthetic weights.
        synthetic_weights: true,
        reply_within: Duration::from_secs(60),
        ..Options::default()
    };
    let exe = std::env::current_exe().context("cannot find the dml executable")?;
    let cluster = dml_cluster::Cluster::start(&exe, layout, opts)?;
    cluster.wait_members(&all, Duration::from_secs(180), true)?;
    let target = https.first().context("no nodes")?.clone();
    let path = format!("/v2/models/{}/infer", args.model);
    let body = request_body(&image);
    // Warm-up: first-touch allocations on every node.
    for _ in 0..2 * args.nodes {
        Conn::open(&target)?.infer(&path, &body)?;
    }
    println!(
        "== served: {} nodes x {} threads, {} over http://{target}, {} s per level ==",
        args.nodes, args.threads, args.model, args.secs
    );
    for &c in &args.clients {
        let before = batches(&https);
        let (lat, errors, took) =
            load(&target, &path, &body, c, Duration::from_secs_f64(args.secs))?;
        let after = batches(&https);
        let s = summarize(&lat).ok_or_else(|| anyhow!("no request succeeded at {c} clients"))?;
        let mean_batch = (after.0 - before.0) / (after.1 - before.1).max(1.0);
        println!(
            "clients {c:>2}: {:.1} req/s, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} requests, {errors} errors, mean batch {mean_batch:.1})",
            s.n as f64 / took.as_secs_f64(),
            s.p50,
            s.p99,
            s.max,
            s.n
        );
    }
    drop(cluster);
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{text}\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn request_body(image: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    serde_json::json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}],
        "parameters": {"classification": 5},
    })
    .to_string()
    .into_bytes()
}

/// `c` clients for `dur`: every latency (ms), the failed requests, the time taken.
fn load(
    target: &str,
    path: &str,
    body: &[u8],
    c: usize,
    dur: Duration,
) -> anyhow::Result<(Vec<f64>, usize, Duration)> {
    let start = Instant::now();
    let end = start + dur;
    let results: Vec<anyhow::Result<(Vec<f64>, usize)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..c)
            .map(|_| {
                s.spawn(move || -> anyhow::Result<(Vec<f64>, usize)> {
                    let mut conn = Conn::open(target)?;
                    let (mut lat, mut errors) = (Vec::new(), 0);
                    while Instant::now() < end {
                        let t = Instant::now();
                        match conn.infer(path, body) {
                            Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                            Err(_) => {
                                errors += 1;
                                conn = Conn::open(target)?;
                            }
                        }
                    }
                    Ok((lat, errors))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))
            })
            .collect()
    });
    let took = start.elapsed();
    let (mut all, mut errors) = (Vec::new(), 0);
    for r in results {
        let (l, e) = r?;
        all.extend(l);
        errors += e;
    }
    Ok((all, errors, took))
}

/// Sum and count of `dml_inference_batch_size` over every node's `/metrics`.
fn batches(https: &[String]) -> (f64, f64) {
    let mut out = (0.0, 0.0);
    for h in https {
        let Ok(text) = Conn::open(h).and_then(|mut c| c.get("/metrics")) else {
            continue;
        };
        for line in text.lines() {
            let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if line.starts_with("dml_inference_batch_size_sum") {
                out.0 += value(line).unwrap_or(0.0);
            } else if line.starts_with("dml_inference_batch_size_count") {
                out.1 += value(line).unwrap_or(0.0);
            }
        }
    }
    out
}

/// One keep-alive HTTP/1.1 connection (no client library: the benchmark should measure
/// the server, and this is all it needs).
struct Conn {
    host: String,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(host: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(host).with_context(|| format!("cannot connect to {host}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Conn {
            host: host.to_string(),
            r: BufReader::new(s),
        })
    }

    fn infer(&mut self, path: &str, body: &[u8]) -> anyhow::Result<()> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let s = self.r.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let (status, text) = self.read()?;
        if status != 200 {
            bail!("status {status}: {text}");
        }
        Ok(())
    }

    fn get(&mut self, path: &str) -> anyhow::Result<String> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.r.get_mut().write_all(head.as_bytes())?;
        Ok(self.read()?.1)
    }

    fn read(&mut self) -> anyhow::Result<(u16, String)> {
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let mut len = None;
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let len = len.ok_or_else(|| anyhow!("answer without Content-Length"))?;
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
