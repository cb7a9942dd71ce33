//! A real S3-compatible server (s3s-fs, file-backed) on 127.0.0.1 for
//! storage tests: started per test on a free port, stoppable and
//! restartable on the same port with its data kept.

use imet::storage::{RetryPolicy, Store, StoreOptions};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "imet-test-key";
pub const SECRET_KEY: &str = "imet-test-secret";

pub struct S3Server {
    pub port: u16,
    pub root: tempfile::TempDir,
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
    /// Starts a server with one bucket, `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let mut s = S3Server { port: free_port(), root, child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on 127.0.0.1:{}", self.port);
            std::thread::sleep(Duration::from_millis(50));
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
        let opts = StoreOptions {
            retry,
            cache: None,
            s3_config: vec![
                ("aws_endpoint".into(), self.endpoint()),
                ("aws_access_key_id".into(), ACCESS_KEY.into()),
                ("aws_secret_access_key".into(), SECRET_KEY.into()),
                ("aws_region".into(), "us-east-1".into()),
            ],
        };
        Store::open_with(&format!("s3://{bucket}/{prefix}"), opts).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
