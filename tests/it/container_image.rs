//! The relocatable bundle and the container image of the `imet` under test.
//!
//! - `ci/build-bundle.sh` packs it with its libtorch libraries. Extracted
//!   into a fresh folder: every file has a `$ORIGIN` RUNPATH, no file names
//!   a folder the build machine loads libraries from, every library the
//!   loader maps comes from the bundle (ldd and `LD_DEBUG=libs` in an empty
//!   environment, with the dependency cache hidden behind an empty mount
//!   when the test runs as root), and it runs `imet info` and a tiny job.
//! - `ci/build-image.sh` makes an image of that bundle with buildah (reused
//!   while the binary and the scripts are unchanged). A tiny job (the
//!   spec's sample and folds, then train and predict of one fold) runs once
//!   with the host binary and once inside the image (`buildah run`, the
//!   image's entry point and user), against one S3 server on 127.0.0.1,
//!   into two prefixes, with one thread on each side. Every object is
//!   byte-identical (images, CSVs, folds, checkpoint, weights, OOF and test
//!   predictions) except those that record time, which are equal once their
//!   time fields are blanked (listed at the comparison).
//! - The image runs a command line the way the rendered AWS Batch
//!   definitions do (`sh -c "..."` passed to the entry point, as user 10001).
//!
//! Needs root, buildah, patchelf and busybox (`bash ci/setup-image-tools.sh`,
//! which ci/test.sh runs); fails, naming the fix, when they are missing.

use crate::common;

use common::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use imet::storage::parquet::read_history;
use imet::storage::tensorboard::read_events;
use imet::storage::RetryPolicy;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn buildah() -> Command {
    let mut c = Command::new("buildah");
    c.args(["--storage-driver", "vfs"]);
    c
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails loudly, with the fix, when the image tools are missing.
fn require_tools() {
    let has = |tool: &str| Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    for tool in ["buildah", "patchelf", "busybox", "readelf"] {
        assert!(has(tool), "`{tool}` is not installed: run `bash ci/setup-image-tools.sh` as root (ci/test.sh does; look for its message in the CI log)");
    }
    assert!(is_root(), "building and running the image with buildah's vfs storage needs root");
}

/// Hex sha256 of a file.
fn file_sha(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))))
}

/// The bundle's flavour: cuda when the binary loads libtorch_cuda.
fn flavour(bin: &Path) -> &'static str {
    let out = Command::new("ldd").arg(bin).env_clear().output().expect("ldd runs");
    if String::from_utf8_lossy(&out.stdout).contains("libtorch_cuda.so") {
        "cuda"
    } else {
        "cpu"
    }
}

struct Built {
    /// A copy of the binary under test, taken first: both sides of the
    /// comparison run exactly what was bundled, even if the build folder's
    /// binary is replaced meanwhile.
    host_bin: PathBuf,
    /// The bundle tarball.
    tarball: PathBuf,
    /// Image name, keyed by the binary and the scripts.
    image: String,
}

/// Builds the bundle and the image once per binary (and script) version:
/// reused from `CARGO_TARGET_TMPDIR` and buildah's storage when present.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_tools();
        let bytes = std::fs::read(common::imet_bin()).expect("the imet binary under test");
        let mut key = Sha256::new();
        key.update(&bytes);
        for f in ["ci/build-bundle.sh", "ci/build-image.sh"] {
            key.update(file_sha(&Path::new(REPO).join(f)));
        }
        let key = hex::encode(key.finalize())[..16].to_string();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("container-image").join(&key);
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("imet");
        if !bin.exists() {
            let tmp = dir.join(format!("imet.{}", std::process::id()));
            std::fs::write(&tmp, &bytes).unwrap();
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &bin).unwrap();
        }
        let flavour = flavour(&bin);
        let tarball = dir.join(format!("imet-{}-{flavour}-linux-x86_64.tar.gz", env!("CARGO_PKG_VERSION")));
        let t = Instant::now();
        if !tarball.exists() {
            ok(
                Command::new("bash")
                    .arg(Path::new(REPO).join("ci/build-bundle.sh"))
                    .args(["--flavour", flavour, "--out"])
                    .arg(&dir)
                    .arg("--bin")
                    .arg(&bin)
                    .env("IMET_BUNDLE_GZIP_LEVEL", "1")
                    .current_dir(REPO)
                    .output()
                    .unwrap(),
                "ci/build-bundle.sh",
            );
        }
        let bundle_s = t.elapsed().as_secs_f64();
        let image = format!("localhost/imet-test:{key}");
        let t = Instant::now();
        let present = buildah().args(["inspect", "--type", "image", &image]).output().unwrap().status.success();
        if !present {
            ok(
                Command::new("bash")
                    .arg(Path::new(REPO).join("ci/build-image.sh"))
                    .arg("--bundle")
                    .arg(&tarball)
                    .args(["--tag", &image, "--no-dev-tag"])
                    .current_dir(REPO)
                    .output()
                    .unwrap(),
                "ci/build-image.sh",
            );
        }
        let image_s = t.elapsed().as_secs_f64();
        prune_other_builds(&key);
        eprintln!("bundle {bundle_s:.1}s, image {image_s:.1}s ({})", if present { "reused" } else { "built" });
        Built { host_bin: bin, tarball, image }
    })
}

/// Removes the test images and cached bundles of other binaries, so reruns
/// do not pile up half-gigabyte copies (vfs storage keeps each image whole).
fn prune_other_builds(key: &str) {
    let listed = buildah().args(["images", "--format", "{{.Name}}:{{.Tag}}"]).output().unwrap();
    for name in String::from_utf8_lossy(&listed.stdout).lines() {
        if name.starts_with("localhost/imet-test:") && !name.ends_with(key) {
            let _ = buildah().args(["rmi", name]).output();
        }
    }
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("container-image");
    for e in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        if e.file_name() != key {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn extract(tarball: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("imet-bundle-").tempdir().unwrap();
    ok(Command::new("tar").arg("-xzf").arg(tarball).arg("-C").arg(dir.path()).output().unwrap(), "tar -x");
    let name = tarball.file_name().unwrap().to_string_lossy().trim_end_matches(".tar.gz").to_string();
    let root = dir.path().join(name);
    assert!(root.join("bin/imet").exists(), "no bin/imet in {}", tarball.display());
    (dir, root)
}

/// The glibc, libstdc++ and libgcc_s the bundle leaves to the host.
fn is_system(soname: &str) -> bool {
    ["libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "libutil.so", "libresolv.so", "ld-linux", "libstdc++.so", "libgcc_s.so", "linux-vdso"]
        .iter()
        .any(|p| soname.starts_with(p))
}

fn runpath(file: &Path) -> String {
    let out = ok(Command::new("readelf").arg("-d").arg(file).output().unwrap(), "readelf -d");
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)")).collect();
    assert_eq!(lines.len(), 1, "{} has {} RUNPATH/RPATH entries", file.display(), lines.len());
    assert!(lines[0].contains("(RUNPATH)"), "{} has an RPATH, not a RUNPATH: {}", file.display(), lines[0]);
    lines[0].split('[').nth(1).unwrap().trim_end_matches(']').to_string()
}

/// The tiny experiment of `common::tiny_spec` (40 sample images, ResNet-18
/// at 32 px, one epoch), with `root` as its store.
fn spec_text(root: &str) -> String {
    common::tiny_spec("tiny", root, "")
}

/// `(args, what)` of the job: the sample and folds, train and predict of fold 0.
fn job_steps(spec: &str) -> Vec<(Vec<String>, &'static str)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (s(&["folds", "--spec", spec]), "folds"),
        (s(&["train", "--spec", spec, "--model", "r18", "--fold", "0"]), "train"),
        (s(&["predict", "--spec", spec, "--model", "r18", "--fold", "0"]), "predict"),
    ]
}

/// The folders the loader takes the host binary's libraries from (as ldd
/// resolves them), as named and canonical: the bundle must name none.
fn host_library_folders(bin: &Path) -> Vec<PathBuf> {
    let ldd = ok(Command::new("ldd").arg(bin).env_clear().output().unwrap(), "ldd of the host binary");
    let mut dirs = Vec::new();
    for line in ldd.lines() {
        let soname = line.split_whitespace().next().unwrap_or_default();
        if let (false, Some(path)) = (is_system(soname), line.split("=> ").nth(1)) {
            let dir = Path::new(path.split(" (").next().unwrap()).parent().unwrap().to_path_buf();
            dirs.extend(std::fs::canonicalize(&dir).ok());
            dirs.push(dir);
        }
    }
    assert!(dirs.iter().any(|d| d.join("libtorch_cpu.so").exists()), "the host binary loads no libtorch library: {ldd}");
    dirs.sort();
    dirs.dedup();
    dirs
}

#[test]
fn the_bundle_runs_from_a_fresh_folder_with_only_its_own_libraries() {
    let _heavy = common::heavy_run();
    let b = built();
    let (_dir, root) = extract(&b.tarball);
    let bin = root.join("bin/imet");

    // RUNPATHs.
    assert_eq!(runpath(&bin), "$ORIGIN/../lib");
    let libs: Vec<PathBuf> = std::fs::read_dir(root.join("lib")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(libs.iter().any(|l| l.ends_with("libtorch_cpu.so")), "no libtorch_cpu.so in lib/");
    for lib in &libs {
        assert_eq!(runpath(lib), "$ORIGIN", "{}", lib.display());
    }

    // No file names a folder the build machine loads libraries from. (A
    // `--bin` build still names source files of the build machine in panic
    // and assertion messages; those are never opened.)
    for dir in host_library_folders(&b.host_bin) {
        let needle = format!("{}/", dir.display());
        let out = Command::new("grep").arg("-rlF").arg(&needle).arg(&root).output().unwrap();
        assert!(out.stdout.is_empty(), "the bundle names {needle}: {}", String::from_utf8_lossy(&out.stdout));
    }

    // Every library the loader resolves, in an empty environment, is the
    // bundle's or the system's C/C++ runtime; and exactly the bundle's
    // libraries are needed.
    let ldd = ok(Command::new("ldd").arg(&bin).env_clear().output().unwrap(), "ldd");
    let mut resolved = Vec::new();
    for line in ldd.lines() {
        let line = line.trim();
        assert!(!line.contains("not found"), "unresolved: {line}\n{ldd}");
        let soname = line.split_whitespace().next().unwrap();
        if let Some(path) = line.split("=> ").nth(1) {
            if !is_system(soname) {
                assert!(path.starts_with(root.to_str().unwrap()), "{soname} resolves outside the bundle: {line}");
                resolved.push(soname.to_string());
            }
        }
    }
    let mut shipped: Vec<String> = libs.iter().map(|l| l.file_name().unwrap().to_string_lossy().into_owned()).collect();
    resolved.sort();
    shipped.sort();
    if flavour(&b.host_bin) == "cpu" {
        assert_eq!(resolved, shipped, "lib/ holds other libraries than the binary loads");
    }

    // What it really maps when it runs (`calling init:` lines of
    // LD_DEBUG=libs), with the dependency cache hidden when we can mount.
    let mut cmd = if is_root() {
        let mut c = Command::new("unshare");
        // LD_DEBUG for imet alone, not for unshare, sh and mount.
        let hide = format!("mount -t tmpfs none '{}' && LD_DEBUG=libs exec \"$0\" info", common::deps_dir().display());
        c.args(["--mount", "sh", "-c", &hide]).arg(&bin).env_clear();
        c
    } else {
        let mut c = Command::new(&bin);
        c.arg("info").env_clear().env("LD_DEBUG", "libs");
        c
    };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = ok(out, "bundled imet info");
    let inits: Vec<&str> = stderr.lines().filter_map(|l| l.split("calling init: ").nth(1)).collect();
    assert!(inits.iter().any(|p| p.ends_with("/libtorch_cpu.so")), "no libtorch_cpu.so loaded:\n{stderr}");
    for p in &inits {
        let name = Path::new(p).file_name().unwrap().to_string_lossy();
        if !is_system(&name) {
            assert!(p.starts_with(root.to_str().unwrap()), "loaded from outside the bundle: {p}");
        }
    }
    let info: serde_json::Value = serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    assert!(info["threads"].as_i64().unwrap() >= 1, "{info}");

    // Build info.
    let build: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("BUILD_INFO.json")).unwrap()).unwrap();
    assert_eq!(build["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build["flavour"], flavour(&b.host_bin));
    assert!(build["libtorch"]["version"].as_str().unwrap().starts_with("2.11.0"), "{build}");
    let commit = build["git_commit"].as_str().unwrap();
    assert!(commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()), "git_commit {commit}");
    assert_eq!(build["files"]["bin/imet"]["sha256"], file_sha(&bin));
    assert!(std::fs::read_to_string(root.join("VERSION")).unwrap().starts_with(&format!("imet {} ", env!("CARGO_PKG_VERSION"))));

    // A tiny job from the fresh folder, in an empty environment.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("spec.toml"), spec_text("store")).unwrap();
    for (args, what) in job_steps("spec.toml") {
        let out = Command::new(&bin).args(&args).current_dir(work.path()).env_clear().env("IMET_DEVICE", "cpu").env("RUST_LOG", "warn").output().unwrap();
        ok(out, &format!("bundled imet {what}"));
    }
    assert!(work.path().join("store/runs/tiny/models/r18/fold=0/_SUCCESS.json").exists());
}

/// Every object under `prefix` of the server's bucket: key -> bytes.
fn objects(server: &S3Server, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let store = server.store("imet", prefix, RetryPolicy::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut all = BTreeMap::new();
        for o in store.list("").await.unwrap() {
            all.insert(o.key.clone(), store.get(&o.key).await.unwrap().to_vec());
        }
        all
    })
}

/// Keys of the outputs that record time (their hashes and sizes differ
/// between two runs of the same job).
fn records_time(key: &str) -> bool {
    key.ends_with("history.parquet") || key.ends_with("predict_stats.json") || key.contains("/tensorboard/")
}

/// A manifest without its commit time, the hash and size of the outputs
/// that record time, and the digests of its upstream manifests (which hash
/// those outputs' hashes).
fn manifest_without_timing(bytes: &[u8]) -> serde_json::Value {
    let mut m: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    for o in m["outputs"].as_array_mut().into_iter().flatten() {
        if o["key"].as_str().is_some_and(records_time) {
            o["sha256"] = serde_json::json!("(timing)");
            o["size"] = serde_json::json!(0);
        }
    }
    for i in m["inputs"].as_array_mut().into_iter().flatten() {
        i["digest"] = serde_json::json!("(upstream timing)");
    }
    m["created_at"] = serde_json::json!("(time)");
    // The machine that ran the job: the container has a host name of its own.
    m["host"] = serde_json::json!("(host)");
    m
}

/// Whether two versions of the object `key` are the same once the fields
/// that record time are blanked (see the comparison in the test).
fn same_but_time(server: &S3Server, key: &str, h: &[u8], i: &[u8]) -> bool {
    if key.ends_with("history.parquet") {
        let read = |prefix: &str| {
            let store = server.store("imet", prefix, RetryPolicy::default());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut rows = rt.block_on(read_history(&store, key)).unwrap();
            for r in rows.iter_mut() {
                r.seconds = 0.0;
                r.train_images_per_sec = 0.0;
            }
            format!("{rows:?}")
        };
        let meta = |bytes: &[u8]| {
            use parquet::file::reader::FileReader;
            let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(bytes.to_vec())).unwrap();
            format!("{:?}", reader.metadata().file_metadata().key_value_metadata())
        };
        read("host") == read("image") && meta(h) == meta(i)
    } else if key.contains("/checkpoints/") {
        // Tensors byte for byte; the loop state in the metadata holds the history.
        let (a, b) = (safetensors::SafeTensors::deserialize(h).unwrap(), safetensors::SafeTensors::deserialize(i).unwrap());
        let (mut names, mut names_b) = (a.names(), b.names());
        names.sort();
        names_b.sort();
        let tensors_same = names == names_b && names.iter().all(|n| a.tensor(n).unwrap().data() == b.tensor(n).unwrap().data());
        let state = |bytes: &[u8]| {
            let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
            let mut v: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["imet_loop_state"]).unwrap();
            for r in v["history"].as_array_mut().unwrap() {
                r["seconds"] = serde_json::json!(0);
                r["train_images_per_sec"] = serde_json::json!(0);
            }
            v
        };
        tensors_same && state(h) == state(i)
    } else if key.contains("/tensorboard/") {
        // Every scalar but the speed and time ones, and no wall times.
        let events = |bytes: &[u8]| {
            let mut ev = read_events(key, bytes).unwrap();
            for e in ev.iter_mut() {
                e.wall_time = 0.0;
                e.values.retain(|(tag, _)| tag != "speed/images_per_sec" && tag != "time/epoch_seconds");
            }
            format!("{ev:?}")
        };
        events(h) == events(i)
    } else if key.ends_with("predict_stats.json") {
        let blank = |bytes: &[u8]| {
            let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            v["seconds"] = serde_json::json!(0);
            v["images_per_sec"] = serde_json::json!(0);
            v
        };
        blank(h) == blank(i)
    } else if key.ends_with(".json") && key.rsplit('/').next().is_some_and(|n| n.starts_with('_')) {
        manifest_without_timing(h) == manifest_without_timing(i)
    } else {
        h == i
    }
}

#[test]
fn the_image_runs_the_same_job_as_the_host_binary_byte_for_byte() {
    let _heavy = common::heavy_run();
    let b = built();
    // Labels, user, entry point.
    let inspect = ok(buildah().args(["inspect", "--type", "image", &b.image]).output().unwrap(), "buildah inspect");
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let config = inspect["OCIv1"]["config"].clone();
    let labels = &config["Labels"];
    let build: serde_json::Value = {
        let (_dir, root) = extract(&b.tarball);
        serde_json::from_slice(&std::fs::read(root.join("BUILD_INFO.json")).unwrap()).unwrap()
    };
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"), "{config}");
    assert_eq!(labels["org.opencontainers.image.revision"], build["git_commit"], "{config}");
    assert_eq!(labels["imet.libtorch.flavour"], flavour(&b.host_bin), "{config}");
    assert_eq!(labels["imet.libtorch.version"], build["libtorch"]["version"], "{config}");
    for l in ["org.opencontainers.image.source", "org.opencontainers.image.created"] {
        assert!(labels[l].as_str().is_some_and(|v| !v.is_empty()), "label {l} missing: {config}");
    }
    assert_eq!(config["User"], "10001:10001");
    let entrypoint: Vec<String> = config["Entrypoint"].as_array().expect("an entry point").iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert!(!entrypoint.is_empty(), "{config}");

    let server = S3Server::start("imet");
    let job = tempfile::tempdir().unwrap();
    // Readable by the image's user.
    std::fs::set_permissions(job.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(job.path().join("spec.toml"), spec_text("s3://imet/unused")).unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", server.endpoint()),
        ("IMET_DEVICE", "cpu".to_string()),
        ("OMP_NUM_THREADS", "1".to_string()),
        ("RAYON_NUM_THREADS", "1".to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];

    // The host binary.
    let t = Instant::now();
    let host_spec = job.path().join("spec.toml");
    for (args, what) in job_steps(host_spec.to_str().unwrap()) {
        let mut c = Command::new(&b.host_bin);
        c.args(&args).env("IMET_ROOT", "s3://imet/host").envs(env.iter().map(|(k, v)| (k, v)));
        ok(c.output().unwrap(), &format!("host imet {what}"));
    }
    let host_s = t.elapsed().as_secs_f64();

    // The image: a working container, the job folder mounted read-only, the
    // host's network (127.0.0.1 is the S3 server). `buildah run` runs the
    // command it is given: the entry point is put in front, as a container
    // runtime does with the arguments of `podman run IMAGE ARGS...`.
    let container = ok(buildah().args(["from", "--quiet", &b.image]).output().unwrap(), "buildah from").trim().to_string();
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = buildah().args(["rm", &self.0]).output();
        }
    }
    let _remove = Remove(container.clone());
    let run = |args: &[&str], extra_env: &[(&str, &str)]| -> Command {
        let mut c = buildah();
        c.args(["run", "--isolation", "chroot", "--network", "host", "--volume"]).arg(format!("{}:/job:ro", job.path().display()));
        for (k, v) in env.iter().map(|(k, v)| (*k, v.as_str())).chain(extra_env.iter().copied()) {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        c.arg(&container).arg("--").args(&entrypoint).args(args);
        c
    };
    let t = Instant::now();
    for (args, what) in job_steps("/job/spec.toml") {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(run(&args, &[("IMET_ROOT", "s3://imet/image")]).output().unwrap(), &format!("imet {what} in the image"));
    }
    let image_s = t.elapsed().as_secs_f64();
    eprintln!("job: host {host_s:.1}s, image {image_s:.1}s");

    let host = objects(&server, "host");
    let image = objects(&server, "image");
    assert_eq!(host.keys().collect::<Vec<_>>(), image.keys().collect::<Vec<_>>(), "the two runs wrote different objects");
    let fold = "runs/tiny/models/r18/fold=0";
    for k in ["model.safetensors", "oof.parquet", "test.parquet", "history.parquet", "_SUCCESS.json"] {
        assert!(host.contains_key(&format!("{fold}/{k}")), "no {fold}/{k}: {:?}", host.keys().collect::<Vec<_>>());
    }
    assert!(host.keys().any(|k| k.starts_with("data/train/")), "no sample images");
    // Every object byte for byte, except those that record time, which are
    // compared with their time fields blanked:
    // - history.parquet: `seconds` and `train_images_per_sec` of each epoch;
    // - checkpoints: the same history, in the loop state of their metadata;
    // - tensorboard/: wall times, and the speed and epoch-time scalars;
    // - predict_stats.json: `seconds` and `images_per_sec`;
    // - manifests (_*.json): `created_at`, the sha256 and size they list for
    //   the files above, and their upstream manifests' digests (over those);
    //   also `host`, the name of the machine that ran the job.
    let mut differ = Vec::new();
    let mut timed = Vec::new();
    for (key, h) in &host {
        let i = &image[key];
        if h == i {
            continue;
        }
        if same_but_time(&server, key, h, i) {
            timed.push(key.clone());
        } else {
            differ.push(format!("{key} ({} vs {} bytes)", h.len(), i.len()));
        }
    }
    assert!(differ.is_empty(), "the host binary and the image wrote different objects: {differ:#?}");
    for k in ["model.safetensors", "oof.parquet", "test.parquet"] {
        let k = format!("{fold}/{k}");
        assert_eq!(host[&k], image[&k], "{k}");
    }
    eprintln!("{} objects byte-identical; equal but for their time fields: {timed:?}", host.len() - timed.len());

    // As the rendered AWS Batch job runs: `sh -c` handed to the entry point,
    // writing the spec from the environment to /etc/imet as user 10001.
    let spec = std::fs::read_to_string(&host_spec).unwrap();
    let line = "mkdir -p /etc/imet && printf '%s' \"$IMET_SPEC_TOML\" > /etc/imet/spec.toml && imet status --spec /etc/imet/spec.toml --json";
    let out = ok(run(&["sh", "-c", line], &[("IMET_SPEC_TOML", &spec), ("IMET_ROOT", "s3://imet/image")]).output().unwrap(), "batch-style command");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"));
    assert!(status.to_string().contains("r18"), "{status}");
    let whoami = ok(run(&["sh", "-c", "id -u"], &[]).output().unwrap(), "id -u");
    assert_eq!(whoami.trim(), "10001");
    // No arguments: imet's help (the image's CMD).
    let cmd: Vec<String> = config["Cmd"].as_array().into_iter().flatten().map(|v| v.as_str().unwrap().to_string()).collect();
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let help = ok(run(&cmd, &[]).output().unwrap(), "the image's default command");
    assert!(help.contains("Usage: imet"), "{help}");
}
