//! The storage layer against a real S3-compatible server (s3s-fs) behind
//! the fault-injecting proxy (`examples/fault_proxy.rs`, started as a
//! process): added latency, `503 SlowDown` answers, truncated and reset
//! bodies, dropped connections and a pause that refuses connections. Every
//! operation either returns the right bytes or fails with an error naming
//! the operation and the key, and the proxy's counters account for every
//! request.

use crate::common;

/// The proxy's source, so its unit tests (framing, globs, seeds) run with
/// this file's; `cargo test` builds the proxy itself as an example binary.
#[allow(dead_code)]
#[path = "../../examples/fault_proxy.rs"]
mod proxy_source;

use bytes::Bytes;
use common::s3::S3Server;
use imet::storage::manifest::{CommitOutcome, JobId, Manifest, OutputEntry};
use imet::storage::RetryPolicy;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The proxy binary cargo builds beside this test (`cargo test` builds
/// examples; `IMET_FAULT_PROXY` overrides).
fn proxy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IMET_FAULT_PROXY") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("tests run from target/<profile>/deps");
    let p = profile_dir.join("examples/fault_proxy");
    assert!(
        p.exists(),
        "no fault proxy at {}; build it with `cargo build --release --example fault_proxy` (a plain `cargo test` builds it)",
        p.display()
    );
    p
}

/// A running proxy process in front of a server.
struct Proxy {
    child: Child,
    port: u16,
    control: u16,
}

impl Proxy {
    fn start(upstream: u16, args: &[&str]) -> Proxy {
        let mut child = Command::new(proxy_binary())
            .args(["--upstream", &format!("127.0.0.1:{upstream}")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the fault proxy starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut port_of = |prefix: &str| -> u16 {
            let line = lines.next().expect("the proxy prints its ports").expect("UTF-8 output");
            let rest = line.strip_prefix(prefix).unwrap_or_else(|| panic!("expected `{prefix}...`, got {line:?}"));
            rest.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {line:?}"))
        };
        let port = port_of("listening on ");
        let control = port_of("control on ");
        Proxy { child, port, control }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One request to the control port; the JSON it answers.
    fn control(&self, method: &str, path: &str, body: &str) -> Value {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.control)).expect("control port answers");
        write!(conn, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        let (head, json) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
        assert!(head.starts_with("HTTP/1.1 200"), "{method} {path}: {reply}");
        serde_json::from_str(json).expect("control replies are JSON")
    }

    fn stats(&self) -> Value {
        self.control("GET", "/stats", "")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy { retries: 10, initial_backoff_ms: 20, max_backoff_ms: 500 }
}

/// Object contents of varied sizes, deterministic per index.
fn content(i: usize, len: usize) -> Bytes {
    Bytes::from((0..len).map(|j| ((i * 131 + j * 7) % 251) as u8).collect::<Vec<u8>>())
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let out = f.await;
    (out, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_added_latency_every_operation_succeeds_and_takes_the_added_time() {
    let server = S3Server::start("imet");
    let proxy = Proxy::start(server.port, &["--latency-ms", "150", "--seed", "1"]);
    let direct = server.store("imet", "", quick_retry());
    let slow = server.store_via(&proxy.endpoint(), "imet", "", quick_retry());
    const N: usize = 6;
    let (_, fast_time) = timed(async {
        for i in 0..N {
            direct.put(&format!("d/{i}"), content(i, 10_000)).await.unwrap();
            assert_eq!(direct.get(&format!("d/{i}")).await.unwrap(), content(i, 10_000));
        }
    })
    .await;
    let (_, slow_time) = timed(async {
        for i in 0..N {
            slow.put(&format!("p/{i}"), content(i, 10_000)).await.unwrap();
            assert_eq!(slow.get(&format!("p/{i}")).await.unwrap(), content(i, 10_000));
        }
    })
    .await;
    // Each of the 2N requests waits 150 ms in turn: a lower bound whatever
    // the machine's load; the direct run bounds the rest.
    let expected = Duration::from_millis(150 * 2 * N as u64);
    assert!(slow_time >= expected, "{slow_time:?} through the proxy, less than the {expected:?} of added latency");
    assert!(slow_time < fast_time + expected * 2, "{slow_time:?} through the proxy, far more than {fast_time:?} direct + {expected:?}");
    eprintln!("fault_proxy: latency: {N} puts + {N} gets: {fast_time:?} direct, {slow_time:?} through the proxy");
    let s = proxy.stats();
    eprintln!("fault_proxy: latency: {s}");
    assert_eq!(count(&s, &["requests_by_method", "PUT"]), N as u64, "{s}");
    assert_eq!(count(&s, &["requests_by_method", "GET"]), N as u64, "{s}");
    assert_eq!(count(&s, &["requests"]), 2 * N as u64, "{s}");
    assert_eq!(count(&s, &["responses_by_status", "200"]), 2 * N as u64, "{s}");
    assert!(s["faults"].as_object().unwrap().is_empty(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_30_percent_slow_down_puts_and_gets_succeed_through_retries() {
    let server = S3Server::start("imet");
    let proxy = Proxy::start(server.port, &["--p-slow-down", "0.3", "--seed", "7"]);
    let store = server.store_via(&proxy.endpoint(), "imet", "runs/e", quick_retry());
    const N: usize = 30;
    for i in 0..N {
        store.put(&format!("obj/{i}"), content(i, i * 4_000)).await.unwrap();
    }
    for i in 0..N {
        assert_eq!(store.get(&format!("obj/{i}")).await.unwrap(), content(i, i * 4_000), "object {i}");
    }
    let s = proxy.stats();
    eprintln!("fault_proxy: slow_down: {s}");
    let slow_downs = count(&s, &["faults", "slow_down"]);
    let requests = count(&s, &["requests"]);
    // Each operation succeeded exactly once; every other request was a 503.
    assert_eq!(count(&s, &["responses_by_status", "200"]), 2 * N as u64, "{s}");
    assert_eq!(count(&s, &["responses_by_status", "503"]), slow_downs, "{s}");
    assert_eq!(requests, 2 * N as u64 + slow_downs, "{s}");
    let rate = slow_downs as f64 / requests as f64;
    assert!((0.15..0.45).contains(&rate), "{slow_downs} of {requests} requests slowed down: {s}");
    assert_eq!(
        count(&s, &["faults_by_method", "PUT", "slow_down"]) + count(&s, &["faults_by_method", "GET", "slow_down"]),
        slow_downs,
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_never_give_wrong_bytes() {
    let server = S3Server::start("imet");
    let rules = json!([{ "fault": "truncate", "method": "GET", "p": 0.5 }]).to_string();
    let proxy = Proxy::start(server.port, &["--rules", &rules, "--seed", "3"]);
    let direct = server.store("imet", "", quick_retry());
    let store = server.store_via(&proxy.endpoint(), "imet", "", quick_retry());
    let sizes = [1usize, 2, 1000, 65_537, 1 << 20, 3 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        direct.put(&format!("t/{i}"), content(i, n)).await.unwrap();
    }
    let mut ok = 0;
    for round in 0..4 {
        for (i, &n) in sizes.iter().enumerate() {
            let key = format!("t/{i}");
            match store.get(&key).await {
                Ok(b) => {
                    assert_eq!(b.len(), n, "round {round}: `{key}` came back with {} of {n} bytes", b.len());
                    assert!(b == content(i, n), "round {round}: `{key}` came back with wrong bytes");
                    ok += 1;
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    assert!(msg.contains("get") && msg.contains(&key), "round {round}: unclear error: {msg}");
                }
            }
        }
    }
    let s = proxy.stats();
    eprintln!("fault_proxy: truncate: {s}");
    let truncated = count(&s, &["faults", "truncate"]);
    assert!(truncated >= 5, "only {truncated} truncations: {s}");
    assert_eq!(ok, 4 * sizes.len(), "some gets failed despite 10 retries: {s}");
    // Every truncated response cost exactly one more request (a ranged
    // re-read by object_store, or a whole get again by the store's retry).
    assert_eq!(count(&s, &["requests_by_method", "GET"]), 4 * sizes.len() as u64 + truncated, "{s}");

    // Always truncated: the get fails, naming the operation and the key.
    proxy.control("POST", "/config", &json!({ "rules": [{ "fault": "truncate", "key": "/imet/t/4" }] }).to_string());
    let few = server.store_via(&proxy.endpoint(), "imet", "", RetryPolicy { retries: 2, initial_backoff_ms: 10, max_backoff_ms: 20 });
    let err = few.get("t/4").await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("`get`") && msg.contains("t/4") && msg.contains("3 attempt"), "{msg}");
    assert_eq!(few.get("t/3").await.unwrap(), content(3, 65_537));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_drops_and_errors_leave_no_partial_object_and_every_put_lands() {
    let server = S3Server::start("imet");
    let rules = json!([
        { "fault": "reset_request", "method": "PUT", "p": 0.25 },
        { "fault": "reset_response", "p": 0.15 },
        { "fault": "drop", "p": 0.1 },
        { "fault": "internal_error", "p": 0.1 },
    ])
    .to_string();
    let proxy = Proxy::start(server.port, &["--rules", &rules, "--seed", "5"]);
    let store = server.store_via(&proxy.endpoint(), "imet", "", quick_retry());
    let direct = server.store("imet", "", quick_retry());
    const N: usize = 24;
    for i in 0..N {
        store.put(&format!("r/{i}"), content(i, 1000 + i * 20_000)).await.unwrap();
    }
    for i in 0..N {
        assert_eq!(store.get(&format!("r/{i}")).await.unwrap(), content(i, 1000 + i * 20_000), "object {i} through the proxy");
        assert_eq!(direct.get(&format!("r/{i}")).await.unwrap(), content(i, 1000 + i * 20_000), "object {i} on the server");
    }
    let listed = direct.list("r").await.unwrap();
    assert_eq!(listed.len(), N, "{listed:?}");
    let s = proxy.stats();
    eprintln!("fault_proxy: resets: {s}");
    for kind in ["reset_request", "reset_response", "drop", "internal_error"] {
        assert!(count(&s, &["faults", kind]) >= 1, "no {kind} injected: {s}");
    }
    // Every request was either answered in full or hit by exactly one fault,
    // and every answer the server gave was a success.
    let faults: u64 = s["faults"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(count(&s, &["requests"]), count(&s, &["completed"]) + faults, "{s}");
    assert_eq!(count(&s, &["upstream_unreachable"]) + count(&s, &["protocol_errors"]), 0, "{s}");
    for (status, n) in s["responses_by_status"].as_object().unwrap() {
        match status.as_str() {
            "200" | "206" => {}
            "500" => assert_eq!(n.as_u64(), Some(count(&s, &["faults", "internal_error"])), "{s}"),
            other => panic!("the server answered {other}: {s}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_commit_whose_answer_is_lost_is_still_committed() {
    let server = S3Server::start("imet");
    // The first conditional PUT reaches the server, but its answer is reset.
    let rules = json!([{ "fault": "reset_response", "method": "PUT", "header": "if-none-match", "limit": 1 }]).to_string();
    let proxy = Proxy::start(server.port, &["--rules", &rules]);
    let store = server.store_via(&proxy.endpoint(), "imet", "", quick_retry());
    let job = JobId { kind: "predict".into(), experiment: "e".into(), model: Some("m".into()), fold: Some(0) };
    let m = Manifest::new(job, "h", vec![OutputEntry::of_bytes("runs/e/x", b"x")]);
    assert_eq!(m.commit(&store, "runs/e/_SUCCESS.json").await.unwrap(), CommitOutcome::Committed);
    let s = proxy.stats();
    eprintln!("fault_proxy: lost commit answer: {s}");
    assert_eq!(count(&s, &["faults", "reset_response"]), 1, "{s}");
    // The retry found the object (a 412 from the server) and the manifest
    // read back was this one.
    assert_eq!(count(&s, &["responses_by_status", "412"]), 1, "{s}");
    assert_eq!(count(&s, &["requests_by_method", "PUT"]), 2, "{s}");
    assert_eq!(Manifest::load(&store, "runs/e/_SUCCESS.json").await.unwrap(), Some(m));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_resume_after_a_pause_that_refuses_connections() {
    let server = S3Server::start("imet");
    let proxy = Proxy::start(server.port, &[]);
    let store = server.store_via(&proxy.endpoint(), "imet", "", RetryPolicy { retries: 10, initial_backoff_ms: 100, max_backoff_ms: 1000 });
    store.put("a", "before").await.unwrap();
    proxy.control("POST", "/pause?ms=1500", "");
    std::thread::sleep(Duration::from_millis(100));
    assert!(std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err(), "connections are not refused during the pause");
    let (put, took) = timed(store.put("b", "during")).await;
    put.unwrap();
    assert!(took >= Duration::from_millis(1000), "the put went through a paused proxy in {took:?}");
    assert_eq!(store.get("b").await.unwrap(), Bytes::from("during"));
    let s = proxy.stats();
    eprintln!("fault_proxy: pause: {s}");
    assert_eq!(count(&s, &["pauses"]), 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_and_requests_give_the_same_faults() {
    async fn run(seed: &str) -> Value {
        let server = S3Server::start("imet");
        let proxy = Proxy::start(server.port, &["--seed", seed, "--p-slow-down", "0.3", "--p-internal-error", "0.1", "--p-truncate", "0.2"]);
        let store = server.store_via(&proxy.endpoint(), "imet", "", quick_retry());
        for i in 0..12 {
            store.put(&format!("s/{i}"), content(i, 5000)).await.unwrap();
            assert_eq!(store.get(&format!("s/{i}")).await.unwrap(), content(i, 5000));
        }
        let s = proxy.stats();
        json!([s["faults_by_method"], s["requests_by_method"], s["responses_by_status"]])
    }
    let a = run("11").await;
    assert_eq!(a, run("11").await);
    assert_ne!(a, run("12").await, "another seed gave the same faults");
}

/// A byte flipped in transit (plain-HTTP endpoint, no TLS) never reaches
/// the caller: `Store::get` checks the body against the object's ETag (the
/// MD5 of a one-request upload, the MD5 of the part MD5s of a multipart
/// one) and reads it again. A body corrupted on every read fails naming
/// the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_in_transit_is_detected_and_read_again() {
    let server = S3Server::start("imet");
    let once = json!([{ "fault": "corrupt", "method": "GET", "limit": 1 }]).to_string();
    let direct = server.store_via(&server.endpoint(), "imet", "", quick_retry());
    direct.put("c/obj", content(1, 100_000)).await.unwrap();
    // A multipart object (20 MiB: two 16 MiB parts), checked by its "-2" ETag.
    assert_eq!(streamed_upload(&direct, "c/big.bin").await.unwrap(), 20 << 20);
    for key in ["c/obj", "c/big.bin"] {
        let proxy = Proxy::start(server.port, &["--rules", &once]);
        let store = server.store_via(&proxy.endpoint(), "imet", "", quick_retry());
        let got = store.get(key).await.expect("read again after the corrupt body");
        let want: Vec<u8> = if key == "c/obj" { content(1, 100_000).to_vec() } else { (0..20).flat_map(|i| content(i, 1 << 20).to_vec()).collect() };
        assert!(got == want, "{key}: get returned a corrupt body");
        let s = proxy.stats();
        eprintln!("fault_proxy: flipped byte, {key}: {s}");
        assert_eq!(count(&s, &["faults", "corrupt"]), 1, "{key}: {s}");
    }

    // Corrupt on every read: a clear error naming the key, after the retries.
    let always = json!([{ "fault": "corrupt", "method": "GET" }]).to_string();
    let proxy = Proxy::start(server.port, &["--rules", &always]);
    let store = server.store_via(&proxy.endpoint(), "imet", "", quick_retry());
    let err = store.get("c/obj").await.expect_err("a body corrupt on every read is refused");
    let text = format!("{err:#}");
    assert!(text.contains("c/obj") && text.contains("ETag") && text.contains("corrupted in transit"), "{text}");
}

/// Writes 20 MiB (two multipart parts) through `put_streamed`.
async fn streamed_upload(store: &imet::storage::Store, key: &str) -> imet::Result<u64> {
    use tokio::io::AsyncWriteExt;
    store
        .put_streamed(key, |mut w| async move {
            for i in 0..20 {
                w.write_all(&content(i, 1 << 20)).await.map_err(|e| imet::Error::Store {
                    op: "put_streamed",
                    key: "upload".into(),
                    attempts: 1,
                    source: object_store::Error::Generic { store: "S3", source: Box::new(e) },
                })?;
            }
            Ok((w, 20u64 << 20))
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_survive_faults_on_their_parts() {
    let server = S3Server::start("imet");
    // Part uploads (PUT ?partNumber=..&uploadId=..) are reset or refused.
    let rules = json!([
        { "fault": "reset_request", "method": "PUT", "query": "partNumber", "limit": 1 },
        { "fault": "slow_down", "method": "PUT", "query": "partNumber", "limit": 2 },
        { "fault": "internal_error", "method": "POST", "query": "uploads", "limit": 1 },
    ])
    .to_string();
    let proxy = Proxy::start(server.port, &["--rules", &rules, "--seed", "9"]);
    let store = server.store_via(&proxy.endpoint(), "imet", "", quick_retry());
    assert_eq!(streamed_upload(&store, "m/big.bin").await.unwrap(), 20 << 20);
    let back = store.get("m/big.bin").await.unwrap();
    assert!(back.len() == 20 << 20 && back.chunks(1 << 20).enumerate().all(|(i, c)| c == content(i, 1 << 20)));
    let s = proxy.stats();
    eprintln!("fault_proxy: multipart: {s}");
    for kind in ["reset_request", "slow_down", "internal_error"] {
        assert!(count(&s, &["faults", kind]) >= 1, "no {kind}: {s}");
    }
}

/// When the answer to the request that completes a multipart upload is
/// lost, the object is written but the client's retry finds the upload gone
/// (`NoSuchUpload`, a 404): `put_streamed` then looks the object up and,
/// finding it new, reports the upload done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_whose_completion_answer_is_lost_still_succeeds() {
    let server = S3Server::start("imet");
    let rules = json!([{ "fault": "reset_response", "method": "POST", "query": "uploadId", "limit": 1 }]).to_string();
    let proxy = Proxy::start(server.port, &["--rules", &rules]);
    let store = server.store_via(&proxy.endpoint(), "imet", "", quick_retry());
    let result = streamed_upload(&store, "m/big.bin").await;
    let s = proxy.stats();
    eprintln!("fault_proxy: lost completion: {s}");
    assert_eq!(count(&s, &["faults", "reset_response"]), 1, "{s}");
    let landed = store.size("m/big.bin").await.unwrap();
    assert!(result.is_ok(), "put_streamed failed ({:#}) though the object is there: {landed:?} bytes", result.unwrap_err());
    assert_eq!(landed, Some(20 << 20));
    let back = store.get("m/big.bin").await.unwrap();
    assert!(back.chunks(1 << 20).enumerate().all(|(i, c)| c == content(i, 1 << 20)));
}
