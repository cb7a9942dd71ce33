//! A loopback HTTP/1.1 proxy that injects faults between an S3 client and an
//! S3-compatible server: added latency with jitter, bandwidth throttling,
//! dropped connections, TCP resets in the middle of a request or response
//! body, `500 InternalError` and `503 SlowDown` answers with S3's XML error
//! body, truncated and corrupted response bodies, and pauses that refuse
//! connections like a restarting server. Storage tests and benchmarks start
//! it as a process in front of `s3s-fs` or moto; it needs no privileges
//! (unlike `tc netem`) and touches only 127.0.0.1.
//!
//! ```text
//! cargo build --release --example fault_proxy
//! target/release/examples/fault_proxy --upstream 127.0.0.1:9000 --seed 7 \
//!     --latency-ms 20 --jitter-ms 5 --p-slow-down 0.3 \
//!     --rules '[{"fault": "truncate", "method": "GET", "key": "/imet/runs/*.parquet", "p": 0.5}]'
//! ```
//!
//! Its first stdout line is `listening on 127.0.0.1:PORT`, the second
//! `control on 127.0.0.1:PORT`; on SIGINT or SIGTERM it prints the final
//! counters as one JSON line and exits.
//!
//! The control port speaks plain HTTP (one request per connection):
//! - `GET /stats`: counters (requests by method, faults by kind and by
//!   method, responses by status, bytes each way, per-rule matches and
//!   firings) as JSON;
//! - `GET /config`, `POST /config`: the fault configuration as JSON; a POST
//!   replaces it (absent fields take their defaults) and resets the rules'
//!   counters;
//! - `POST /pause?ms=N`: closes the listening socket (connections are
//!   refused), resets every open connection, and listens again after N ms;
//! - `POST /reset`: zeroes the counters.
//!
//! Faults hit whole requests: the proxy parses HTTP/1.1 framing
//! (Content-Length, chunked bodies in both directions; `aws-chunked`
//! payloads travel inside a Content-Length or chunked body and are
//! forwarded as they are; `Expect: 100-continue`; HEAD, 1xx, 204 and 304
//! answers without a body; bodies delimited by the close of the connection)
//! so keep-alive connections keep working between faults. Each upstream
//! exchange uses a fresh upstream connection, so an idle upstream
//! connection closed by the server is never mistaken for a fault.
//!
//! Reproducibility: the fate of a request (its fault and its jitter) is a
//! function of `--seed`, its method, its path without the query, and how
//! many requests with that method and path came before it. The same
//! requests per key give the same faults whatever the interleaving across
//! keys. Rules with `skip` or `limit` count matches across all keys, so
//! they depend on the order of concurrent requests.
//!
//! HTTP parsing is by hand on top of `httparse` (heads only) rather than
//! through hyper, because the faults need byte-level control of the wire:
//! cutting a body at a chosen byte, closing with a FIN or an RST, keeping
//! a stated Content-Length while sending less.

use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 << 10;

#[derive(Parser, Debug)]
#[command(about = "A loopback HTTP/1.1 fault-injecting proxy for S3-compatible servers")]
struct Args {
    /// Upstream server: `127.0.0.1:PORT`, `[::1]:PORT` or just `PORT` (loopback only).
    #[arg(long)]
    upstream: String,
    /// Port to listen on, on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    listen: u16,
    /// Port of the control endpoint, on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    control: u16,
    /// Seed of every random decision.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Added latency before each request is forwarded or answered.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Extra latency drawn uniformly from 0..=jitter per request.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Bandwidth limit per connection and direction, bytes/s (0: none).
    #[arg(long, default_value_t = 0)]
    bandwidth: u64,
    /// Probability of closing the connection instead of forwarding a request.
    #[arg(long, default_value_t = 0.0)]
    p_drop: f64,
    /// Probability of a TCP reset halfway through the request body.
    #[arg(long, default_value_t = 0.0)]
    p_reset_request: f64,
    /// Probability of a TCP reset halfway through the response body.
    #[arg(long, default_value_t = 0.0)]
    p_reset_response: f64,
    /// Probability of answering `500 InternalError` instead of forwarding.
    #[arg(long, default_value_t = 0.0)]
    p_internal_error: f64,
    /// Probability of answering `503 SlowDown` instead of forwarding.
    #[arg(long, default_value_t = 0.0)]
    p_slow_down: f64,
    /// Probability of sending half the response body, then closing.
    #[arg(long, default_value_t = 0.0)]
    p_truncate: f64,
    /// Probability of flipping one byte in the middle of the response body.
    #[arg(long, default_value_t = 0.0)]
    p_corrupt: f64,
    /// Targeted rules, as a JSON array (or `@file`), checked before the
    /// `--p-*` faults; see [`Rule`].
    #[arg(long)]
    rules: Option<String>,
    /// Log every request and its fate to stderr.
    #[arg(long)]
    verbose: bool,
}

/// What goes wrong with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Fault {
    /// Close the client connection after its request head; nothing is forwarded.
    Drop,
    /// Forward the head and half the request body, then reset both connections.
    ResetRequest,
    /// Forward the request, then reset halfway through the response: after
    /// its head and half its body, or halfway through the head when it has
    /// no body (the server acted; the client never hears).
    ResetResponse,
    /// Answer `500 InternalError` without forwarding.
    InternalError,
    /// Answer `503 SlowDown` without forwarding.
    SlowDown,
    /// Forward the response head unchanged (its Content-Length too) and half
    /// the body, then close the connection (FIN); without a body, close
    /// halfway through the head.
    Truncate,
    /// Flip one byte in the middle of the response body (length unchanged).
    Corrupt,
    /// Wait `delay_ms` more before forwarding (rules only; does not stop
    /// later rules from firing).
    Delay,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::ResetRequest => "reset_request",
            Fault::ResetResponse => "reset_response",
            Fault::InternalError => "internal_error",
            Fault::SlowDown => "slow_down",
            Fault::Truncate => "truncate",
            Fault::Corrupt => "corrupt",
            Fault::Delay => "delay",
        }
    }
}

/// A fault and the requests it may hit. Every condition given must hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    fault: Fault,
    /// Probability per matching request.
    #[serde(default = "one")]
    p: f64,
    /// HTTP method (`GET`, `PUT`, `HEAD`, `POST`, `DELETE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    /// Glob on the request path without its query (`*` any run of bytes,
    /// `/` included; `?` one byte), e.g. `/bucket/runs/*/oof.parquet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// `true`: only requests with a `Range` header; `false`: only without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    range: Option<bool>,
    /// A query parameter the request must have (`uploadId`, `partNumber`, `list-type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    /// A header the request must have (`if-none-match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    /// The first `skip` matching requests are spared.
    #[serde(default)]
    skip: u64,
    /// Fire at most this many times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    /// Extra latency of a `delay` fault.
    #[serde(default)]
    delay_ms: u64,
}

fn one() -> f64 {
    1.0
}

impl Rule {
    fn of(fault: Fault, p: f64) -> Rule {
        Rule { fault, p, method: None, key: None, range: None, query: None, header: None, skip: 0, limit: None, delay_ms: 0 }
    }

    fn matches(&self, req: &Request) -> bool {
        self.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(&req.method))
            && self.key.as_deref().is_none_or(|g| glob(g.as_bytes(), req.path().as_bytes()))
            && self.range.is_none_or(|want| want == req.header("range").is_some())
            && self.query.as_deref().is_none_or(|q| req.has_query(q))
            && self.header.as_deref().is_none_or(|h| req.header(h).is_some())
    }

    fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.p) {
            return Err(format!("rule {:?}: p = {} is not a probability", self.fault.name(), self.p));
        }
        Ok(())
    }
}

/// The whole fault configuration (`GET`/`POST /config`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    latency_ms: u64,
    jitter_ms: u64,
    /// Bytes/s per connection and direction; 0: unlimited.
    bandwidth: u64,
    /// Checked in order; the first fault that fires (other than `delay`) wins.
    rules: Vec<Rule>,
}

impl Config {
    fn check(&self) -> Result<(), String> {
        self.rules.iter().try_for_each(Rule::check)
    }
}

/// `*` matches any run of bytes, `?` one byte.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

// ---------------------------------------------------------------------------
// HTTP/1.1 messages

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Request {
    method: String,
    target: String,
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
    raw: Vec<u8>,
}

struct Response {
    status: u16,
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
    raw: Vec<u8>,
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

fn has_token(headers: &[(String, Vec<u8>)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|t| String::from_utf8_lossy(t).trim().eq_ignore_ascii_case(token))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Content-Length or chunked framing of a message's headers.
fn body_framing(headers: &[(String, Vec<u8>)], otherwise: Framing) -> io::Result<Framing> {
    if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")) {
        // RFC 9112 6.1: chunked must be the last coding.
        let last = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
            .rfind(|t| !t.is_empty());
        return match last.as_deref() {
            Some("chunked") => Ok(Framing::Chunked),
            _ => Ok(Framing::UntilClose),
        };
    }
    let mut length: Option<u64> = None;
    for (_, v) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        let n: u64 = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| invalid("unparseable Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(invalid("conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => otherwise,
    })
}

fn owned_headers(hs: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    hs.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect()
}

impl Request {
    fn parse(raw: Vec<u8>) -> io::Result<Request> {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut hs);
        match req.parse(&raw) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(invalid("incomplete request head")),
            Err(e) => return Err(invalid(format!("bad request head: {e}"))),
        }
        Ok(Request {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            version: req.version.unwrap_or(1),
            headers: owned_headers(req.headers),
            raw,
        })
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn has_query(&self, name: &str) -> bool {
        self.target
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv.split('=').next() == Some(name)))
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }

    fn framing(&self) -> io::Result<Framing> {
        body_framing(&self.headers, Framing::Empty)
    }

    fn expects_continue(&self) -> bool {
        has_token(&self.headers, "expect", "100-continue")
    }

    fn closes(&self) -> bool {
        has_token(&self.headers, "connection", "close") || (self.version == 0 && !has_token(&self.headers, "connection", "keep-alive"))
    }
}

impl Response {
    fn parse(raw: Vec<u8>) -> io::Result<Response> {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut hs);
        match resp.parse(&raw) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(invalid("incomplete response head")),
            Err(e) => return Err(invalid(format!("bad response head: {e}"))),
        }
        Ok(Response {
            status: resp.code.unwrap_or(0),
            version: resp.version.unwrap_or(1),
            headers: owned_headers(resp.headers),
            raw,
        })
    }

    fn framing(&self, method: &str) -> io::Result<Framing> {
        if method.eq_ignore_ascii_case("HEAD") || (100..200).contains(&self.status) || self.status == 204 || self.status == 304 {
            return Ok(Framing::Empty);
        }
        body_framing(&self.headers, Framing::UntilClose)
    }

    fn closes(&self) -> bool {
        has_token(&self.headers, "connection", "close") || (self.version == 0 && !has_token(&self.headers, "connection", "keep-alive"))
    }
}

/// Reads one message head (through the blank line). `None` at a clean end
/// of stream before the first byte.
async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = read_line(r, &mut head, MAX_HEAD).await?;
        if n == 0 {
            return if head.is_empty() { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                // RFC 9112 2.2: ignore empty lines before a request line.
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(invalid("message head over 64 KiB"));
        }
    }
}

/// `read_until(b'\n')` that refuses lines longer than `max`.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, out: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let mut n = 0;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(n);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        n += take;
        if done {
            return Ok(n);
        }
        if n > max {
            return Err(invalid("line too long"));
        }
    }
}

/// Writes `buf`, pacing it to `bandwidth` bytes/s when that is not 0.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8], bandwidth: u64) -> io::Result<()> {
    if bandwidth == 0 {
        return w.write_all(buf).await;
    }
    // Pieces of about 20 ms each, so pacing is smooth without tiny writes.
    let piece = ((bandwidth / 50) as usize).clamp(256, 64 << 10);
    for part in buf.chunks(piece) {
        w.write_all(part).await?;
        w.flush().await?;
        tokio::time::sleep(Duration::from_secs_f64(part.len() as f64 / bandwidth as f64)).await;
    }
    Ok(())
}

/// What to do to a body while copying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    None,
    /// Stop halfway (Content-Length: half of it; chunked or close-delimited:
    /// halfway through the first piece of data).
    Half,
    /// Flip one byte halfway, keep the length.
    Flip,
}

/// Copies one body framed as `framing` from `src` to `dst`, byte for byte
/// (chunk-size lines and trailers included). Returns the bytes written and
/// whether it stopped early because of `cut`.
async fn copy_body<R, W>(src: &mut R, dst: &mut W, framing: Framing, cut: Cut, bandwidth: u64) -> io::Result<(u64, bool)>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        Framing::Empty => Ok((0, false)),
        Framing::Length(n) => copy_exact(src, dst, n, cut, bandwidth).await,
        Framing::UntilClose => {
            let mut sent = 0u64;
            let mut first = true;
            loop {
                let buf = src.fill_buf().await?;
                if buf.is_empty() {
                    return Ok((sent, false));
                }
                let mut chunk = buf.to_vec();
                let len = chunk.len();
                src.consume(len);
                if first && cut == Cut::Half {
                    send(dst, &chunk[..len / 2], bandwidth).await?;
                    return Ok((sent + (len / 2) as u64, true));
                }
                if first && cut == Cut::Flip {
                    chunk[len / 2] ^= 0xff;
                }
                first = false;
                send(dst, &chunk, bandwidth).await?;
                sent += len as u64;
            }
        }
        Framing::Chunked => {
            let mut sent = 0u64;
            let mut first_data = true;
            loop {
                let mut line = Vec::new();
                if read_line(src, &mut line, 4096).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let size_text = String::from_utf8_lossy(&line);
                let size_hex = size_text.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_hex, 16).map_err(|_| invalid(format!("bad chunk size line {size_text:?}")))?;
                send(dst, &line, bandwidth).await?;
                sent += line.len() as u64;
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        let mut t = Vec::new();
                        if read_line(src, &mut t, MAX_HEAD).await? == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        send(dst, &t, bandwidth).await?;
                        sent += t.len() as u64;
                        if t == b"\r\n" || t == b"\n" {
                            return Ok((sent, false));
                        }
                    }
                }
                let this_cut = if first_data { cut } else { Cut::None };
                first_data = false;
                let (n, stopped) = copy_exact(src, dst, size, this_cut, bandwidth).await?;
                sent += n;
                if stopped {
                    return Ok((sent, true));
                }
                let mut crlf = Vec::new();
                read_line(src, &mut crlf, 2).await?;
                send(dst, &crlf, bandwidth).await?;
                sent += crlf.len() as u64;
            }
        }
    }
}

/// Copies exactly `n` bytes (or half of them with [`Cut::Half`]).
async fn copy_exact<R, W>(src: &mut R, dst: &mut W, n: u64, cut: Cut, bandwidth: u64) -> io::Result<(u64, bool)>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let stop = if cut == Cut::Half { n / 2 } else { n };
    let flip_at = if cut == Cut::Flip { Some(n / 2) } else { None };
    let mut done = 0u64;
    while done < stop {
        let buf = src.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body ended before its length"));
        }
        let take = buf.len().min((stop - done) as usize);
        let mut piece = buf[..take].to_vec();
        src.consume(take);
        if let Some(at) = flip_at {
            if (done..done + take as u64).contains(&at) {
                piece[(at - done) as usize] ^= 0xff;
            }
        }
        send(dst, &piece, bandwidth).await?;
        done += take as u64;
    }
    Ok((done, cut == Cut::Half))
}

/// S3's error document for an injected `status`.
fn s3_error(status: u16, req: &Request, request_no: u64, close: bool) -> Vec<u8> {
    let (reason, code, message) = match status {
        503 => ("Service Unavailable", "SlowDown", "Please reduce your request rate."),
        _ => ("Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    };
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let request_id = format!("FAULTPROXY{request_no:016X}");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Resource>{}</Resource><RequestId>{request_id}</RequestId></Error>",
        escape(req.path())
    );
    let head_only = req.method.eq_ignore_ascii_case("HEAD");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: {request_id}\r\nServer: fault_proxy\r\nConnection: {}\r\n\r\n",
        if head_only { 0 } else { body.len() },
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

// ---------------------------------------------------------------------------
// Shared state: configuration, counters, pauses

#[derive(Clone, Debug, Default, Serialize)]
struct RuleStats {
    matched: u64,
    fired: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
struct Stats {
    connections: u64,
    requests: u64,
    /// Requests forwarded and answered in full without a fault (`delay` aside).
    completed: u64,
    requests_by_method: BTreeMap<String, u64>,
    /// Faults decided, by kind (`delay` included).
    faults: BTreeMap<String, u64>,
    faults_by_method: BTreeMap<String, BTreeMap<String, u64>>,
    /// Statuses sent to clients: upstream's and injected ones.
    responses_by_status: BTreeMap<u16, u64>,
    bytes_to_upstream: u64,
    bytes_to_client: u64,
    /// Requests that could not reach the upstream server (connection reset).
    upstream_unreachable: u64,
    /// Connections ended by a protocol error (either side).
    protocol_errors: u64,
    pauses: u64,
    rules: Vec<RuleStats>,
}

struct State {
    upstream: SocketAddr,
    listen: Mutex<SocketAddr>,
    seed: u64,
    verbose: bool,
    config: Mutex<Config>,
    stats: Mutex<Stats>,
    seen: Mutex<HashMap<String, u64>>,
    /// Bumped to reset every open connection (pauses).
    kill: watch::Sender<u64>,
    pause: Notify,
    pause_for: Mutex<Duration>,
}

/// What to do with one request.
struct Plan {
    number: u64,
    fault: Option<Fault>,
    delay: Duration,
}

/// Locks `m`; a panic elsewhere leaves the counters usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// FNV-1a over `parts`, then SplitMix64: a stable seed per request.
fn request_seed(seed: u64, method: &str, path: &str, occurrence: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in method.bytes().chain([0u8]).chain(path.bytes()).chain([0u8]).chain(occurrence.to_le_bytes()).chain(seed.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl State {
    fn plan(&self, req: &Request) -> Plan {
        let signature = format!("{} {}", req.method, req.path());
        let occurrence = {
            let mut seen = lock(&self.seen);
            let n = seen.entry(signature).or_insert(0);
            *n += 1;
            *n - 1
        };
        let mut rng = ChaCha8Rng::seed_from_u64(request_seed(self.seed, &req.method, req.path(), occurrence));
        let config = lock(&self.config).clone();
        let mut delay = config.latency_ms + if config.jitter_ms > 0 { rng.random_range(0..=config.jitter_ms) } else { 0 };
        let mut stats = lock(&self.stats);
        stats.requests += 1;
        let number = stats.requests;
        *stats.requests_by_method.entry(req.method.clone()).or_default() += 1;
        let mut fault = None;
        let mut fired = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            if !rule.matches(req) {
                continue;
            }
            let draw: f64 = rng.random();
            let Some(rs) = stats.rules.get_mut(i) else { continue };
            rs.matched += 1;
            if rs.matched <= rule.skip || rule.limit.is_some_and(|l| rs.fired >= l) || draw >= rule.p {
                continue;
            }
            rs.fired += 1;
            fired.push(rule.fault);
            if rule.fault == Fault::Delay {
                delay += rule.delay_ms;
                continue;
            }
            fault = Some(rule.fault);
            break;
        }
        for f in fired {
            *stats.faults.entry(f.name().to_string()).or_default() += 1;
            *stats.faults_by_method.entry(req.method.clone()).or_default().entry(f.name().to_string()).or_default() += 1;
        }
        drop(stats);
        if self.verbose {
            eprintln!("#{number} {} {} -> {} (+{delay} ms)", req.method, req.target, fault.map_or("forward", Fault::name));
        }
        Plan { number, fault, delay: Duration::from_millis(delay) }
    }

    fn bandwidth(&self) -> u64 {
        lock(&self.config).bandwidth
    }

    fn count_status(&self, status: u16) {
        *lock(&self.stats).responses_by_status.entry(status).or_default() += 1;
    }

    fn stats_json(&self) -> String {
        serde_json::to_string(&*lock(&self.stats)).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

// ---------------------------------------------------------------------------
// One client connection

/// How a connection ends.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Close normally (FIN).
    Close,
    /// Reset both sides (RST).
    Reset,
}

type Conn = BufReader<TcpStream>;

/// Serves requests on `client` until it closes, a fault ends it, or an
/// error occurs. `upstream` holds the current upstream connection, so the
/// caller can reset it.
async fn serve(client: &mut Conn, upstream: &mut Option<Conn>, st: &State) -> io::Result<End> {
    loop {
        let Some(head) = read_head(client).await? else { return Ok(End::Close) };
        let req = match Request::parse(head) {
            Ok(r) => r,
            Err(e) => {
                client.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
                return Err(e);
            }
        };
        let framing = req.framing()?;
        let plan = st.plan(&req);
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        let bandwidth = st.bandwidth();
        match plan.fault {
            Some(Fault::Drop) => return Ok(End::Close),
            Some(f @ (Fault::InternalError | Fault::SlowDown)) => {
                // The client waiting for `100 Continue` sends no body: answer and close.
                let close = req.expects_continue() || req.closes();
                if !req.expects_continue() {
                    copy_body(client, &mut tokio::io::sink(), framing, Cut::None, 0).await?;
                }
                let status = if f == Fault::SlowDown { 503 } else { 500 };
                let reply = s3_error(status, &req, plan.number, close);
                send(client, &reply, bandwidth).await?;
                client.flush().await?;
                lock(&st.stats).bytes_to_client += reply.len() as u64;
                st.count_status(status);
                if close {
                    return Ok(End::Close);
                }
                continue;
            }
            _ => {}
        }

        // A fresh upstream connection per exchange (see the module docs).
        *upstream = None;
        let up = match TcpStream::connect(st.upstream).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                upstream.insert(BufReader::new(s))
            }
            Err(e) => {
                lock(&st.stats).upstream_unreachable += 1;
                if st.verbose {
                    eprintln!("#{} upstream {} unreachable: {e}", plan.number, st.upstream);
                }
                return Ok(End::Reset);
            }
        };
        up.write_all(&req.raw).await?;
        let mut up_bytes = req.raw.len() as u64;
        if req.expects_continue() {
            up.flush().await?;
            let Some(interim) = read_head(up).await? else { return Ok(End::Reset) };
            let interim = Response::parse(interim)?;
            send(client, &interim.raw, bandwidth).await?;
            client.flush().await?;
            if interim.status != 100 {
                // A final answer before the body: pass its body on and close.
                st.count_status(interim.status);
                let rf = interim.framing(&req.method)?;
                copy_body(up, client, rf, Cut::None, bandwidth).await?;
                client.flush().await?;
                return Ok(End::Close);
            }
        }
        let cut = if plan.fault == Some(Fault::ResetRequest) { Cut::Half } else { Cut::None };
        let (n, stopped) = copy_body(client, up, framing, cut, bandwidth).await?;
        up_bytes += n;
        lock(&st.stats).bytes_to_upstream += up_bytes;
        if stopped || plan.fault == Some(Fault::ResetRequest) {
            up.flush().await?;
            return Ok(End::Reset);
        }
        up.flush().await?;

        let resp = loop {
            let Some(head) = read_head(up).await? else {
                // The server closed without answering: so does the proxy.
                lock(&st.stats).upstream_unreachable += 1;
                return Ok(End::Reset);
            };
            let resp = Response::parse(head)?;
            if (100..200).contains(&resp.status) && resp.status != 101 {
                send(client, &resp.raw, bandwidth).await?;
                continue;
            }
            break resp;
        };
        let rf = resp.framing(&req.method)?;
        if rf == Framing::Empty && matches!(plan.fault, Some(Fault::ResetResponse | Fault::Truncate)) {
            // No body to cut (HEAD, 204, a PUT's answer): the answer itself
            // is lost halfway through its head, though the server acted.
            send(client, &resp.raw[..resp.raw.len() / 2], bandwidth).await?;
            client.flush().await?;
            lock(&st.stats).bytes_to_client += (resp.raw.len() / 2) as u64;
            return Ok(if plan.fault == Some(Fault::ResetResponse) { End::Reset } else { End::Close });
        }
        st.count_status(resp.status);
        let cut = match plan.fault {
            Some(Fault::ResetResponse | Fault::Truncate) => Cut::Half,
            Some(Fault::Corrupt) => Cut::Flip,
            _ => Cut::None,
        };
        send(client, &resp.raw, bandwidth).await?;
        let (n, _) = copy_body(up, client, rf, cut, bandwidth).await?;
        client.flush().await?;
        lock(&st.stats).bytes_to_client += resp.raw.len() as u64 + n;
        match plan.fault {
            Some(Fault::ResetResponse) => return Ok(End::Reset),
            Some(Fault::Truncate) => return Ok(End::Close),
            Some(_) => {}
            None => lock(&st.stats).completed += 1,
        }
        if req.closes() || resp.closes() || rf == Framing::UntilClose {
            return Ok(End::Close);
        }
    }
}

/// Closes with an RST instead of a FIN.
fn reset(conn: Conn) {
    let stream = conn.into_inner();
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(sock: TcpStream, st: Arc<State>) {
    let _ = sock.set_nodelay(true);
    let mut kill = st.kill.subscribe();
    lock(&st.stats).connections += 1;
    let mut client = BufReader::new(sock);
    let mut upstream: Option<Conn> = None;
    let end = tokio::select! {
        r = serve(&mut client, &mut upstream, &st) => r,
        _ = kill.changed() => Ok(End::Reset),
    };
    match end {
        Ok(End::Close) => {
            let _ = client.get_mut().shutdown().await;
        }
        Ok(End::Reset) => {
            reset(client);
            if let Some(u) = upstream {
                reset(u);
            }
        }
        Err(e) => {
            lock(&st.stats).protocol_errors += 1;
            if st.verbose {
                eprintln!("connection ended: {e}");
            }
            reset(client);
            if let Some(u) = upstream {
                reset(u);
            }
        }
    }
}

/// Accepts connections, closing the listening socket during pauses.
async fn accept_loop(first: TcpListener, st: Arc<State>) {
    let mut listener = Some(first);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => {
                let addr = *lock(&st.listen);
                match TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("cannot listen again on {addr}: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
        };
        loop {
            tokio::select! {
                accepted = l.accept() => match accepted {
                    Ok((sock, _)) => { tokio::spawn(connection(sock, st.clone())); }
                    Err(e) => eprintln!("accept failed: {e}"),
                },
                _ = st.pause.notified() => break,
            }
        }
        drop(l);
        st.kill.send_modify(|g| *g += 1);
        let pause = *lock(&st.pause_for);
        tokio::time::sleep(pause).await;
    }
}

// ---------------------------------------------------------------------------
// Control endpoint

async fn control_loop(listener: TcpListener, st: Arc<State>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let st = st.clone();
        tokio::spawn(async move {
            let mut conn = BufReader::new(sock);
            let (status, body) = match control_request(&mut conn, &st).await {
                Ok(ok) => ok,
                Err(e) => (400, serde_json::json!({ "error": e.to_string() }).to_string()),
            };
            let reason = if status == 200 { "OK" } else { "Bad Request" };
            let reply = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.get_mut().shutdown().await;
        });
    }
}

async fn control_request(conn: &mut Conn, st: &State) -> io::Result<(u16, String)> {
    let head = read_head(conn).await?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let req = Request::parse(head)?;
    let mut body = Vec::new();
    copy_body(conn, &mut body, req.framing()?, Cut::None, 0).await?;
    let query = |name: &str| -> Option<String> {
        req.target.split_once('?').and_then(|(_, q)| {
            q.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
        })
    };
    let json_config = |c: &Config| serde_json::to_string(c).unwrap_or_default();
    Ok(match (req.method.as_str(), req.path()) {
        ("GET", "/stats") => (200, st.stats_json()),
        ("GET", "/config") => (200, json_config(&lock(&st.config))),
        ("POST", "/config") => {
            let config: Config = serde_json::from_slice(&body).map_err(|e| invalid(format!("config: {e}")))?;
            config.check().map_err(invalid)?;
            lock(&st.stats).rules = vec![RuleStats::default(); config.rules.len()];
            *lock(&st.config) = config.clone();
            (200, json_config(&config))
        }
        ("POST", "/pause") => {
            let ms: u64 = query("ms").and_then(|v| v.parse().ok()).ok_or_else(|| invalid("use /pause?ms=N"))?;
            *lock(&st.pause_for) = Duration::from_millis(ms);
            lock(&st.stats).pauses += 1;
            st.pause.notify_one();
            (200, serde_json::json!({ "paused_ms": ms }).to_string())
        }
        ("POST", "/reset") => {
            let rules = lock(&st.config).rules.len();
            *lock(&st.stats) = Stats { rules: vec![RuleStats::default(); rules], ..Stats::default() };
            lock(&st.seen).clear();
            (200, st.stats_json())
        }
        _ => (400, serde_json::json!({ "error": "use GET /stats, GET|POST /config, POST /pause?ms=N, POST /reset" }).to_string()),
    })
}

// ---------------------------------------------------------------------------

fn upstream_addr(raw: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = if let Ok(port) = raw.parse::<u16>() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else {
        raw.trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map_err(|e| format!("--upstream {raw:?}: {e}; give 127.0.0.1:PORT"))?
    };
    if !addr.ip().is_loopback() {
        return Err(format!("--upstream {addr}: only loopback addresses are allowed"));
    }
    Ok(addr)
}

fn initial_config(a: &Args) -> Result<Config, String> {
    let mut rules: Vec<Rule> = match &a.rules {
        None => Vec::new(),
        Some(text) => {
            let json = match text.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--rules {path}: {e}"))?,
                None => text.clone(),
            };
            serde_json::from_str(&json).map_err(|e| format!("--rules: {e}"))?
        }
    };
    for (fault, p) in [
        (Fault::Drop, a.p_drop),
        (Fault::ResetRequest, a.p_reset_request),
        (Fault::ResetResponse, a.p_reset_response),
        (Fault::InternalError, a.p_internal_error),
        (Fault::SlowDown, a.p_slow_down),
        (Fault::Truncate, a.p_truncate),
        (Fault::Corrupt, a.p_corrupt),
    ] {
        if p > 0.0 {
            rules.push(Rule::of(fault, p));
        }
    }
    let config = Config { latency_ms: a.latency_ms, jitter_ms: a.jitter_ms, bandwidth: a.bandwidth, rules };
    config.check()?;
    Ok(config)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let fail = |msg: String| -> ! {
        eprintln!("fault_proxy: {msg}");
        std::process::exit(2)
    };
    let upstream = upstream_addr(&args.upstream).unwrap_or_else(|e| fail(e));
    let config = initial_config(&args).unwrap_or_else(|e| fail(e));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.listen))
        .await
        .unwrap_or_else(|e| fail(format!("cannot listen on 127.0.0.1:{}: {e}", args.listen)));
    let control = TcpListener::bind((Ipv4Addr::LOCALHOST, args.control))
        .await
        .unwrap_or_else(|e| fail(format!("cannot listen on 127.0.0.1:{}: {e}", args.control)));
    let listen_addr = listener.local_addr().unwrap_or_else(|e| fail(e.to_string()));
    let control_addr = control.local_addr().unwrap_or_else(|e| fail(e.to_string()));
    let rules = config.rules.len();
    let st = Arc::new(State {
        upstream,
        listen: Mutex::new(listen_addr),
        seed: args.seed,
        verbose: args.verbose,
        config: Mutex::new(config),
        stats: Mutex::new(Stats { rules: vec![RuleStats::default(); rules], ..Stats::default() }),
        seen: Mutex::new(HashMap::new()),
        kill: watch::channel(0).0,
        pause: Notify::new(),
        pause_for: Mutex::new(Duration::ZERO),
    });
    println!("listening on {listen_addr}");
    println!("control on {control_addr}");
    tokio::spawn(accept_loop(listener, st.clone()));
    tokio::spawn(control_loop(control, st.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| fail(format!("cannot watch SIGTERM: {e}")));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("{}", st.stats_json());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_paths() {
        assert!(glob(b"/b/runs/*/oof.parquet", b"/b/runs/e/models/m/fold=0/oof.parquet"));
        assert!(!glob(b"/b/runs/*/oof.parquet", b"/b/runs/e/test.parquet"));
        assert!(glob(b"*", b""));
        assert!(glob(b"/b/?", b"/b/x"));
        assert!(!glob(b"/b/?", b"/b/xy"));
    }

    #[test]
    fn request_seeds_depend_on_every_part() {
        let s = request_seed(1, "GET", "/b/k", 0);
        assert_eq!(s, request_seed(1, "GET", "/b/k", 0));
        for other in [request_seed(2, "GET", "/b/k", 0), request_seed(1, "PUT", "/b/k", 0), request_seed(1, "GET", "/b/j", 0), request_seed(1, "GET", "/b/k", 1)] {
            assert_ne!(s, other);
        }
    }

    #[tokio::test]
    async fn chunked_bodies_are_copied_byte_for_byte_and_cut_halfway() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum: abc\r\n\r\nNEXT".to_vec();
        let mut src = BufReader::new(&wire[..]);
        let mut out = Vec::new();
        let (n, cut) = copy_body(&mut src, &mut out, Framing::Chunked, Cut::None, 0).await.unwrap();
        assert_eq!((n as usize, cut), (wire.len() - 4, false));
        assert_eq!(&out[..], &wire[..wire.len() - 4]);
        let mut src = BufReader::new(&wire[..]);
        let mut out = Vec::new();
        let (_, cut) = copy_body(&mut src, &mut out, Framing::Chunked, Cut::Half, 0).await.unwrap();
        assert!(cut);
        assert_eq!(&out[..], b"5;ext=1\r\nhe");
    }

    #[tokio::test]
    async fn length_bodies_flip_one_byte_in_the_middle() {
        let wire = b"abcdefgh".to_vec();
        let mut out = Vec::new();
        copy_body(&mut BufReader::new(&wire[..]), &mut out, Framing::Length(8), Cut::Flip, 0).await.unwrap();
        assert_eq!(out.len(), 8);
        assert_eq!(out.iter().zip(&wire).filter(|(a, b)| a != b).count(), 1);
        assert_eq!(out[4], b'e' ^ 0xff);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = |pairs: &[(&str, &str)]| pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect::<Vec<_>>();
        assert_eq!(body_framing(&h(&[("Content-Length", "10")]), Framing::Empty).unwrap(), Framing::Length(10));
        assert_eq!(body_framing(&h(&[("Transfer-Encoding", "gzip, chunked"), ("Content-Length", "3")]), Framing::Empty).unwrap(), Framing::Chunked);
        assert_eq!(body_framing(&h(&[]), Framing::UntilClose).unwrap(), Framing::UntilClose);
        assert!(body_framing(&h(&[("Content-Length", "1"), ("Content-Length", "2")]), Framing::Empty).is_err());
        let resp = Response { status: 200, version: 1, headers: h(&[("Content-Length", "10")]), raw: Vec::new() };
        assert_eq!(resp.framing("HEAD").unwrap(), Framing::Empty);
        assert_eq!(resp.framing("GET").unwrap(), Framing::Length(10));
    }

    #[test]
    fn only_loopback_upstreams_are_accepted() {
        assert_eq!(upstream_addr("9000").unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert!(upstream_addr("127.0.0.1:9000").is_ok());
        assert!(upstream_addr("[::1]:9000").is_ok());
        assert!(upstream_addr("10.0.0.1:9000").is_err());
    }

    #[test]
    fn rules_parse_from_json_and_refuse_bad_probabilities() {
        let r: Vec<Rule> = serde_json::from_str(r#"[{"fault": "truncate", "method": "GET", "range": true, "p": 0.5}]"#).unwrap();
        assert_eq!(r[0].fault, Fault::Truncate);
        assert!(Rule { p: 1.5, ..r[0].clone() }.check().is_err());
        assert!(serde_json::from_str::<Vec<Rule>>(r#"[{"fault": "truncate", "methd": "GET"}]"#).is_err());
    }
}
