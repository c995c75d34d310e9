//! The KServe v2 HTTP endpoint on a real process cluster (issue 17): curl and the real
//! `tritonclient[http]` package get the same top-5 as `dml classify` for the sample
//! photos; concurrent requests run on more than one node; bad input is a JSON 4xx and the
//! node goes on serving; `/metrics` passes `promtool check metrics` and a real Prometheus
//! server scrapes every node.
//!
//! Needs curl, python3 with `tritonclient[http]` (`DML_TEST_PYTHON` names the
//! interpreter; `.ci/run` makes a venv), and promtool/prometheus (Debian `prometheus`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use base64::Engine as _;
use dml_cluster::{Options, Stop, TestConfig};
use serde_json::{json, Value};

const SECRET: &str = "serve-test-secret-0123456789abcdef";
const TOKEN: &str = "serve-test-token-0123456789";
const MAX_BODY: usize = 4 << 20;

struct Serving {
    cluster: dml_cluster::Cluster,
    dir: PathBuf,
    /// (node name, node address, http address)
    nodes: Vec<(String, String, String)>,
}

/// Starts `n` nodes, each with an HTTP endpoint; HTTPS with a fresh self-signed
/// certificate (`cert.pem`, for 127.0.0.1) when `tls`.
fn start(name: &str, n: usize, tls: bool) -> Serving {
    let dir = std::env::temp_dir().join(format!("dml-test-{name}-{}", std::process::id()));
    let mut extra = format!(
        "[inference]\nthreads = 1\n\n[http]\ntoken_file = \"http.token\"\nmax_body_bytes = {MAX_BODY}\n"
    );
    if tls {
        extra.push_str("cert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n");
    }
    let layout = TestConfig {
        secret: SECRET,
        nodes: n,
        ping_duration: 0.5,
        ping_timeout: 0.3,
        cleanup_time: 1.5,
        fd_extra: "",
        extra: &extra,
    }
    .write(&dir)
    .expect("config");
    // Synthetic weight files, which the nodes and `dml classify` both load.
    common::synth_weights(&dir.join("weights"));
    if tls {
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join("key.pem"), fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let token = dir.join("http.token");
    fs::write(&token, format!("{TOKEN}\n")).expect("token");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).expect("chmod");
    let ports = dml_cluster::free_ports(n).expect("ports");
    let mut nodes = Vec::new();
    let mut per_node = std::collections::BTreeMap::new();
    for ((node, addr), port) in layout.nodes.iter().zip(ports) {
        let http = format!("127.0.0.1:{port}");
        per_node.insert(node.clone(), vec!["--http".to_string(), http.clone()]);
        nodes.push((node.clone(), addr.clone(), http));
    }
    let opts = Options {
        env: vec![("RUST_LOG".into(), "info".into())],
        stop: Stop::Kill,
        own_dir: Some(dir.clone()),
        args_of: per_node,
        reply_within: Duration::from_secs(60),
        ..Options::default()
    };
    let cluster = dml_cluster::Cluster::start(Path::new(env!("CARGO_BIN_EXE_dml")), layout, opts)
        .expect("start the cluster");
    let all: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
    cluster
        .wait_members(&all, Duration::from_secs(120), true)
        .expect("cluster formed");
    Serving {
        cluster,
        dir,
        nodes,
    }
}

/// One curl call: (status, body). `args` come after the URL.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "120", "-w", "\n%{http_code}", url])
        .args(args)
        .output()
        .expect("curl (install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn auth() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

/// POSTs `body` (a file, for large bodies) to `url` with the token.
fn post(url: &str, body: &Value, dir: &Path) -> (u16, Value) {
    let f = dir.join(format!("req-{}.json", rand_suffix()));
    fs::write(&f, serde_json::to_vec(body).expect("json")).expect("write");
    let (code, text) = curl(
        url,
        &["-H", &auth(), "--data-binary", &format!("@{}", f.display())],
    );
    let _ = fs::remove_file(&f);
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text})),
    )
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The sample photos, copied alone into a directory (`dml classify` takes a directory).
fn photos(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/images");
    let out = dir.join("photos");
    fs::create_dir_all(&out).expect("mkdir");
    let mut files = Vec::new();
    for e in fs::read_dir(&src).expect("samples/images") {
        let p = e.expect("entry").path();
        if matches!(p.extension().and_then(|x| x.to_str()), Some("jpg" | "png")) {
            let to = out.join(p.file_name().expect("name"));
            fs::copy(&p, &to).expect("copy");
            files.push(to);
        }
    }
    files.sort();
    (out, files)
}

/// `dml classify --json` of `dir` with the cluster's weight files: file name -> top-5
/// class indices.
fn classify(s: &Serving, dir: &Path, model: &str) -> Vec<(String, Vec<u64>)> {
    let out = Command::new(env!("CARGO_BIN_EXE_dml"))
        .args([
            "classify",
            "--json",
            "--threads",
            "1",
            "--model",
            model,
            "--weights",
        ])
        .arg(s.dir.join("weights"))
        .arg(dir)
        .output()
        .expect("dml classify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: Vec<(String, Vec<u64>)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            let idx = v["top5"]
                .as_array()
                .expect("top5")
                .iter()
                .map(|c| c["index"].as_u64().expect("index"))
                .collect();
            (v["file"].as_str().expect("file").to_string(), idx)
        })
        .collect();
    rows.sort();
    rows
}

/// Class indices of "prob:index:label" strings.
fn indices(top: &[Value]) -> Vec<u64> {
    top.iter()
        .map(|s| {
            let s = s.as_str().expect("string");
            s.split(':')
                .nth(1)
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("{s}"))
        })
        .collect()
}

fn base64_of(p: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(fs::read(p).expect("read"))
}

fn image_request(images: &[&Path]) -> Value {
    let data: Vec<String> = images.iter().map(|p| base64_of(p)).collect();
    json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [data.len()], "data": data}],
           "parameters": {"classification": 5}})
}

#[test]
fn kserve_v2_over_the_cluster() {
    let s = start("serve-http", 3, false);
    let (photo_dir, files) = photos(&s.dir);
    assert!(files.len() >= 4, "{files:?}");
    let want = classify(&s, &photo_dir, "resnet50");
    let h1 = format!("http://{}", s.nodes[0].2);

    // Health and metrics are open; everything else needs the token.
    assert_eq!(curl(&format!("{h1}/v2/health/live"), &[]).0, 200);
    let (code, body) = curl(&format!("{h1}/v2/health/ready"), &[]);
    assert_eq!((code, body.contains("true")), (200, true), "{body}");
    let (code, body) = curl(&format!("{h1}/v2"), &[]);
    assert_eq!(code, 401, "{body}");
    assert!(serde_json::from_str::<Value>(&body).expect("json")["error"].is_string());
    let (code, _) = curl(
        &format!("{h1}/v2"),
        &["-H", "Authorization: Bearer wrong-token-000000000"],
    );
    assert_eq!(code, 401);
    let (code, body) = curl(&format!("{h1}/v2"), &["-H", &auth()]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&format!("{h1}/v2/models/inception_v3"), &["-H", &auth()]);
    assert_eq!(code, 200, "{body}");
    let meta: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(meta["inputs"][1]["shape"], json!([-1, 3, 299, 299]));
    assert_eq!(
        curl(&format!("{h1}/v2/models/resnet50/ready"), &["-H", &auth()]).0,
        200
    );
    assert_eq!(
        curl(&format!("{h1}/v2/models/vgg16/ready"), &["-H", &auth()]).0,
        404
    );

    // curl, one image per request, every node: the same top 5 as `dml classify`.
    let infer = |http: &str| format!("http://{http}/v2/models/resnet50/infer");
    for (i, f) in files.iter().enumerate() {
        let http = &s.nodes[i % s.nodes.len()].2;
        let (code, res) = post(&infer(http), &image_request(&[f]), &s.dir);
        assert_eq!(code, 200, "{res}");
        let out = &res["outputs"][0];
        assert_eq!(out["shape"], json!([1, 5]), "{res}");
        let name = f.file_name().and_then(|n| n.to_str()).expect("name");
        let expected = &want.iter().find(|(n, _)| n == name).expect("classified").1;
        assert_eq!(
            &indices(out["data"].as_array().expect("data")),
            expected,
            "{name}: {res}"
        );
    }

    // One request with every photo: rows in input order.
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (code, res) = post(&infer(&s.nodes[1].2), &image_request(&refs), &s.dir);
    assert_eq!(code, 200, "{res}");
    let data = res["outputs"][0]["data"].as_array().expect("data").clone();
    assert_eq!(data.len(), 5 * files.len());
    for (row, (_, expected)) in data.chunks(5).zip(&want) {
        assert_eq!(&indices(row), expected);
    }

    // A preprocessed FP32 tensor with raw logits: the same classes as the encoded image.
    let pixels = dml_models::preprocess::preprocess(
        &fs::read(&files[0]).expect("read"),
        dml_models::Network::ResNet50,
    )
    .expect("preprocess");
    let req = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": pixels}],
                     "outputs": [{"name": "logits"}]});
    let (code, res) = post(&infer(&s.nodes[2].2), &req, &s.dir);
    assert_eq!(
        code,
        200,
        "{}",
        res.to_string().chars().take(300).collect::<String>()
    );
    let logits: Vec<f32> = res["outputs"][0]["data"]
        .as_array()
        .expect("logits")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect();
    assert_eq!(logits.len(), 1000);
    let mut order: Vec<usize> = (0..1000).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let top: Vec<u64> = order[..5].iter().map(|&i| i as u64).collect();
    assert_eq!(top, want[0].1);

    // Concurrent requests at batch size 1 (C3) spread over the nodes.
    let c3 = s.cluster.ask(
        &s.nodes[0].1,
        dml_actors::control::Command::C3 {
            model: "resnet50".into(),
            batch: 1,
        },
        Duration::from_secs(30),
    );
    assert!(matches!(c3, Ok(Ok(_))), "{c3:?}");
    std::thread::sleep(Duration::from_secs(3)); // the endpoint asks for C3 sizes every 2 s
    let url = infer(&s.nodes[0].2);
    let req = image_request(&[&files[0]]);
    let served: BTreeSet<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..12)
            .map(|_| sc.spawn(|| post(&url, &req, &s.dir)))
            .collect();
        hs.into_iter()
            .map(|h| {
                let (code, res) = h.join().expect("thread");
                assert_eq!(code, 200, "{res}");
                assert_eq!(
                    indices(res["outputs"][0]["data"].as_array().expect("data")),
                    want[0].1
                );
                res["parameters"]["node"]
                    .as_str()
                    .expect("node")
                    .to_string()
            })
            .collect()
    });
    assert!(
        served.len() > 1,
        "12 concurrent requests all ran on {served:?}"
    );

    jobs_over_http(&s, &photo_dir, &want);
    bad_input_is_a_json_4xx(&s, &files);
    tritonclient_gets_the_same_top5(&s, &files, &want);
    metrics_pass_promtool_and_prometheus_scrapes_every_node(&s);
}

/// A job over an SDFS prefix, submitted, followed and read back over HTTP.
fn jobs_over_http(s: &Serving, photo_dir: &Path, want: &[(String, Vec<u64>)]) {
    let put = dml_actors::control::Request::Put {
        local: photo_dir.display().to_string(),
        name: "inputs/photos".into(),
    };
    let r = s.cluster.ask(&s.nodes[0].1, put, Duration::from_secs(60));
    assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    let jobs = format!("http://{}/v1/jobs", s.nodes[2].2);
    let (code, res) = post(
        &jobs,
        &json!({"model": "resnet50", "input": "inputs/nothing-here"}),
        &s.dir,
    );
    assert_eq!(code, 400, "{res}");
    let (code, res) = post(
        &jobs,
        &json!({"model": "resnet50", "input": "inputs/photos"}),
        &s.dir,
    );
    assert_eq!(code, 202, "{res}");
    let job = res["job"].as_str().expect("job id").to_string();
    assert_eq!(res["queries"], json!(want.len()));
    let mut last = String::new();
    let done = dml_cluster::wait_until(Duration::from_secs(120), || {
        let (code, body) = curl(&jobs, &["-H", &auth()]);
        last = body.clone();
        let v: Value = serde_json::from_str(&body)?;
        Ok(code == 200
            && v["jobs"]
                .as_array()
                .is_some_and(|j| j.iter().all(|r| r["complete"] == true) && !j.is_empty()))
    });
    assert!(done.is_ok(), "job did not complete: {last}");
    let (code, body) = curl(&format!("{jobs}/{job}/results"), &["-H", &auth()]);
    assert_eq!(code, 200, "{body}");
    let rows: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), want.len(), "{body}");
    for row in rows {
        let name = row["query"]
            .as_str()
            .expect("query")
            .rsplit('/')
            .next()
            .expect("name")
            .to_string();
        let expected = &want.iter().find(|(n, _)| *n == name).expect("classified").1;
        let got: Vec<u64> = row["top5"]
            .as_array()
            .expect("top5")
            .iter()
            .map(|c| c["index"].as_u64().expect("index"))
            .collect();
        assert_eq!(&got, expected, "{name}");
    }
    let (code, body) = curl(&format!("{jobs}/9-99/results"), &["-H", &auth()]);
    assert_eq!(code, 404, "{body}");
    assert_eq!(curl(&jobs, &[]).0, 401);
}

fn bad_input_is_a_json_4xx(s: &Serving, files: &[PathBuf]) {
    let url = format!("http://{}/v2/models/resnet50/infer", s.nodes[0].2);
    let not_image = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                       "data": [base64::engine::general_purpose::STANDARD.encode(b"hello, not a jpeg")]}]});
    let wrong_shape = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 299, 299], "data": [0.0]}]});
    let wrong_dtype = json!({"inputs": [{"name": "input", "datatype": "INT8", "shape": [1, 3, 224, 224], "data": [0]}]});
    for (req, status, says) in [
        (not_image, 400, "input element 0"),
        (wrong_shape, 400, "[N, 3, 224, 224]"),
        (wrong_dtype, 400, "datatype INT8"),
        (json!({"inputs": "x"}), 400, "not a valid inference request"),
    ] {
        let (code, res) = post(&url, &req, &s.dir);
        assert_eq!(code, status, "{res}");
        assert!(
            res["error"].as_str().is_some_and(|e| e.contains(says)),
            "{res}"
        );
    }
    let (code, res) = post(
        &format!("http://{}/v2/models/vgg16/infer", s.nodes[0].2),
        &image_request(&[&files[0]]),
        &s.dir,
    );
    assert_eq!(code, 404, "{res}");
    assert!(
        res["error"].as_str().is_some_and(|e| e.contains("vgg16")),
        "{res}"
    );
    // Too large a body: 413 with the protocol's error, not a dropped connection.
    let big = s.dir.join("big.bin");
    fs::write(&big, vec![b'x'; MAX_BODY + 1]).expect("write");
    let (code, body) = curl(
        &url,
        &[
            "-H",
            &auth(),
            "--data-binary",
            &format!("@{}", big.display()),
        ],
    );
    assert_eq!(code, 413, "{body}");
    assert!(serde_json::from_str::<Value>(&body).expect("json")["error"].is_string());
    let (code, body) = curl(
        &url,
        &[
            "-H",
            &auth(),
            "-H",
            "Inference-Header-Content-Length: 99999",
            "-d",
            "{}",
        ],
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(
        &format!("http://{}/v2/nothing", s.nodes[0].2),
        &["-H", &auth()],
    );
    assert_eq!(code, 404, "{body}");
    let (code, body) = curl(&url, &["-H", &auth()]);
    assert_eq!(code, 405, "{body}");
    // And the node still serves.
    let (code, res) = post(&url, &image_request(&[&files[1]]), &s.dir);
    assert_eq!(code, 200, "{res}");
}

fn python() -> String {
    std::env::var("DML_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn tritonclient_gets_the_same_top5(s: &Serving, files: &[PathBuf], want: &[(String, Vec<u64>)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/triton_check.py");
    let out = Command::new(python())
        .arg(&script)
        .args([&s.nodes[1].2, TOKEN, "resnet50"])
        .args(files)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "tritonclient check failed (needs `pip install tritonclient[http]`; DML_TEST_PYTHON \
         names the interpreter, .ci/run makes one):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), files.len());
    for l in lines {
        let name = l["file"].as_str().expect("file");
        let expected = &want.iter().find(|(n, _)| n == name).expect("classified").1;
        assert_eq!(
            &indices(l["top5"].as_array().expect("top5")),
            expected,
            "{name}"
        );
    }
}

/// Kills a child process (Prometheus) when the test ends, passing or not.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metrics_pass_promtool_and_prometheus_scrapes_every_node(s: &Serving) {
    let (code, text) = curl(&format!("http://{}/metrics", s.nodes[0].2), &[]);
    assert_eq!(code, 200);
    for name in [
        "dml_inference_requests_total{model=\"resnet50\",outcome=\"ok\"}",
        "dml_inference_failures_total{model=\"resnet50\"}",
        "dml_inference_batch_size_bucket",
        "dml_inference_queue_seconds_bucket",
        "dml_inference_compute_seconds_bucket",
        "dml_inference_request_seconds_bucket",
        "dml_membership_members 3",
        "dml_transport_sent_bytes_total{lane=\"bulk\"}",
        "dml_sdfs_stored_objects",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let port = dml_cluster::free_ports(1).expect("port")[0];
    let targets: Vec<String> = s.nodes.iter().map(|n| format!("\"{}\"", n.2)).collect();
    let cfg = s.dir.join("prometheus.yml");
    fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dml\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .expect("write");
    let log = fs::File::create(s.dir.join("prometheus.log")).expect("log");
    let _prom = Reap(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                s.dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus)"),
    );
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=dml_membership_members");
    let mut last = String::new();
    let scraped = dml_cluster::wait_until(Duration::from_secs(60), || {
        let (code, body) = curl(&query, &[]);
        last = body.clone();
        if code != 200 {
            return Ok(false);
        }
        let v: Value = serde_json::from_str(&body)?;
        let rows = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let instances: BTreeSet<String> = rows
            .iter()
            .filter(|r| r["value"][1] == "3")
            .filter_map(|r| r["metric"]["instance"].as_str().map(String::from))
            .collect();
        Ok(instances.len() == s.nodes.len())
    });
    assert!(
        scraped.is_ok(),
        "Prometheus did not scrape every node: {last}"
    );
}

#[test]
fn https_with_a_configured_certificate() {
    let s = start("serve-https", 1, true);
    let (_, files) = photos(&s.dir);
    let cert = s.dir.join("cert.pem");
    let cert = cert.to_str().expect("path");
    let https = format!("https://{}", s.nodes[0].2);
    let (code, body) = curl(&format!("{https}/v2/health/ready"), &["--cacert", cert]);
    assert_eq!(code, 200, "{body}");
    // Plain HTTP to the HTTPS port gets no answer, and a client that does not trust
    // the certificate refuses it.
    assert_eq!(
        curl(&format!("http://{}/v2/health/live", s.nodes[0].2), &[]).0,
        0
    );
    assert_eq!(curl(&format!("{https}/v2/health/live"), &[]).0, 0);
    let req = s.dir.join("req.json");
    fs::write(&req, image_request(&[&files[0]]).to_string()).expect("write");
    let (code, body) = curl(
        &format!("{https}/v2/models/resnet50/infer"),
        &[
            "--cacert",
            cert,
            "-H",
            &auth(),
            "--data-binary",
            &format!("@{}", req.display()),
        ],
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["outputs"][0]["shape"], json!([1, 5]));
    let (code, _) = curl(&format!("{https}/v2"), &["--cacert", cert]);
    assert_eq!(code, 401);
}
