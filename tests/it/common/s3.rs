//! Real S3-compatible servers on 127.0.0.1 for storage tests, started per
//! test on a free port: s3s-fs (file-backed, so it can be stopped and
//! restarted with its data kept) and moto (in memory; its conditional
//! writes are atomic under concurrency, where s3s-fs checks and then writes).

use imet::storage::{RetryPolicy, Store, StoreOptions};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "imet-test-key";
pub const SECRET_KEY: &str = "imet-test-secret";

/// Which server implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    S3sFs,
    Moto,
}

pub struct S3Server {
    pub port: u16,
    pub root: tempfile::TempDir,
    pub backend: Backend,
    bucket: String,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    let p = std::env::var("IMET_S3S_FS").map(PathBuf::from).unwrap_or_else(|_| super::deps_dir().join("bin/s3s-fs"));
    assert!(p.exists(), "no S3 test server at {}; run `bash ci/setup-s3.sh` (ci/test.sh does)", p.display());
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl S3Server {
    /// Starts an s3s-fs server with one bucket, `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        S3Server::start_with(Backend::S3sFs, bucket)
    }

    /// Starts a server of `backend` with one bucket, `bucket`.
    pub fn start_with(backend: Backend, bucket: &str) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let mut s = S3Server { port: free_port(), root, backend, bucket: bucket.to_string(), child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.backend {
            Backend::S3sFs => {
                let mut c = Command::new(binary());
                c.args(["--host", "127.0.0.1", "--port", &port])
                    .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                    .arg(self.root.path());
                c
            }
            Backend::Moto => {
                let mut c = Command::new(super::python());
                c.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port]);
                c
            }
        };
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("S3 test server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{:?} did not listen on 127.0.0.1:{}", self.backend, self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.backend == Backend::Moto {
            // moto keeps buckets in memory: create it (moto accepts unsigned requests).
            use std::io::{Read, Write};
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
            write!(conn, "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.bucket, self.port).unwrap();
            let mut reply = String::new();
            conn.read_to_string(&mut reply).unwrap();
            assert!(reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"), "moto refused the bucket: {reply}");
        }
    }

    /// Kills the server (connections in flight break).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A store at `s3://{bucket}/{prefix}` on this server.
    pub fn store(&self, bucket: &str, prefix: &str, retry: RetryPolicy) -> Store {
        self.store_via(&self.endpoint(), bucket, prefix, retry)
    }

    /// A store at `s3://{bucket}/{prefix}` on this server, reached through
    /// `endpoint` (a proxy in front of it).
    pub fn store_via(&self, endpoint: &str, bucket: &str, prefix: &str, retry: RetryPolicy) -> Store {
        let opts = StoreOptions {
            retry,
            cache: None,
            s3_config: vec![
                ("aws_endpoint".into(), endpoint.to_string()),
                ("aws_access_key_id".into(), ACCESS_KEY.into()),
                ("aws_secret_access_key".into(), SECRET_KEY.into()),
                ("aws_region".into(), "us-east-1".into()),
            ],
            ..Default::default()
        };
        Store::open_with(&format!("s3://{bucket}/{prefix}"), opts).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
