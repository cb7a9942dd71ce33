//! Offline packages (`imet package`, `imet infer`): what test time needs,
//! as one folder (or tar file) to copy onto a machine without internet,
//! and the run that turns a folder of test images into `submission.csv`
//! there.
//!
//! A package holds:
//!
//! ```text
//! {out}/README.md        how to run it, and which libtorch the binary needs
//! {out}/run.sh           bin/imet infer --package {out} --data ROOT --out submission.csv
//! {out}/bin/imet         this executable (or a bundle's bin/ and lib/, --bundle)
//! {out}/spec.toml        the resolved spec, storage.root = "store", [inference] test-only + apply
//! {out}/package.json     every file with its size and sha256, the experiment, the imet version
//! {out}/store/data/labels.csv, sample_submission.csv (the run's test list: `imet budget` counts it)
//! {out}/store/runs/{exp}/[stages/{s}/]models/{m}/fold={k}/{model.safetensors,_TRAINED.json,predict_stats.json}
//! {out}/store/runs/{exp}/[stages/{s}/]models/level2/fold={k}/model.txt   (a stage with `level2`)
//! {out}/store/runs/{exp}/[stages/{s}/]ensemble/thresholds.json
//! {out}/store/data/train.csv   (only with a level-2 model: its features count the training labels)
//! ```
//!
//! for every stage, every ensemble member, and every fold whose test
//! predictions the ensemble averages: no training image, no checkpoint, no
//! OOF file. Its spec's jobs hash as the training run's did
//! (`[inference]` is not part of any job's identity), so the fold models'
//! `_TRAINED.json` and the saved `thresholds.json` are recognised.
//!
//! `imet infer` makes a writable store (`--work`) holding links to the
//! package's files, the package's `labels.csv`, the test folder's
//! `sample_submission.csv` and a link to its `test/` images; runs every
//! stage's test-only predict jobs, its level-2 jobs (saved fold models
//! applied) and its ensemble in apply mode, in order, in this process; and copies the last stage's `submission.csv`
//! out. Jobs commit as usual, so a rerun after an interruption skips what
//! is done.

use crate::error::{Error, Result};
use crate::ids::Fold;
use crate::spec::{EnsembleMode, InferenceSection, JobSpec, MAIN};
use crate::storage::keys::{self, Scope};
use crate::storage::{Manifest, OutputEntry, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tracing::info;

/// Version of `package.json`'s layout.
pub const PACKAGE_VERSION: u32 = 1;
/// The package's store folder, relative to the package.
pub const STORE_DIR: &str = "store";
/// The package's spec, relative to the package.
pub const SPEC_FILE: &str = "spec.toml";
/// The package's list of files.
pub const LIST_FILE: &str = "package.json";

/// What `imet package` copies and where to.
#[derive(Clone, Debug)]
pub struct PackageOptions {
    /// The package folder.
    pub out: PathBuf,
    /// A relocatable bundle (`bin/imet` and `lib/`) copied instead of `program`.
    pub bundle: Option<PathBuf>,
    /// Also write the package as one tar file here.
    pub tar: Option<PathBuf>,
    /// Replace a non-empty `out` that holds another package (or anything else).
    pub force: bool,
    /// The executable copied to `bin/imet` without a bundle.
    pub program: PathBuf,
}

/// One file of a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFile {
    /// Path relative to the package folder, with `/`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `package.json`: what the package holds and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackageList {
    pub version: u32,
    pub experiment: String,
    pub imet_version: String,
    /// The store the models were copied from.
    pub source_root: String,
    /// Stages in run order, the last one's submission being the package's.
    pub stages: Vec<String>,
    /// Fold models per stage, as `{stage}/{model}/fold={k}`.
    pub models: Vec<String>,
    /// Whether `bin/` came from a relocatable bundle.
    pub bundle: bool,
    pub files: Vec<PackageFile>,
}

/// What `imet package` did.
#[derive(Clone, Debug, Serialize)]
pub struct PackageSummary {
    pub out: PathBuf,
    /// `true` when `out` already held this very package (nothing written).
    pub unchanged: bool,
    pub files: usize,
    pub bytes: u64,
    pub models: Vec<String>,
    pub tar: Option<PathBuf>,
}

impl PackageSummary {
    /// A few lines for people.
    pub fn render(&self) -> String {
        let mut s = format!(
            "package {}: {} files, {:.1} MB, {} fold models{}\n",
            self.out.display(),
            self.files,
            self.bytes as f64 / 1e6,
            self.models.len(),
            if self.unchanged { " (unchanged: it already held this package)" } else { "" }
        );
        if let Some(t) = &self.tar {
            s.push_str(&format!("tar: {}\n", t.display()));
        }
        s.push_str(&format!("run it offline: {}/run.sh TEST_ROOT [submission.csv]\n", self.out.display()));
        s
    }
}

/// The packaged spec of `spec`: its store the package's `store/` folder,
/// no cache, no cluster settings, and `[inference]` test-only with saved
/// thresholds applied. Checks that every job keeps its identity.
///
/// # Errors
/// [`Error::Spec`] when the packaged spec does not validate (a stage with
/// a `level2` model); [`Error::Usage`] for shard sets recoded at build time.
pub fn packaged_spec(spec: &JobSpec) -> Result<JobSpec> {
    if spec.image.source.uses_shards() && spec.image.shards.recode != crate::image::ShardRecode::Original {
        return Err(Error::Usage(format!(
            "experiment `{}` reads shard sets recoded to {:?}; a package reads test images as they are, so its predictions would differ: package a run with `image.shards.recode = \"original\"`",
            spec.experiment, spec.image.shards.recode
        )));
    }
    let mut p = spec.clone();
    p.storage.root = STORE_DIR.to_string();
    p.storage.cache_dir = None;
    p.cluster = Default::default();
    p.inference = InferenceSection { oof: false, ensemble: EnsembleMode::Apply };
    let p = JobSpec::parse("the packaged spec", &p.to_toml())?;
    for st in spec.stages() {
        if p.stage_hash(st.name) != spec.stage_hash(st.name) {
            return Err(Error::Usage(format!("internal: packaging changes the identity of stage `{}`", st.name)));
        }
    }
    Ok(p)
}

/// One fold model of a package: its stage key, model and fold.
struct FoldModel {
    stage: Option<String>,
    model: String,
    fold: u8,
    spec_hash: String,
}

/// What a package holds of one stage and what `imet infer` runs for it.
struct StagePlan {
    /// The stage as keys carry it (`None`: the first).
    key: Option<String>,
    name: String,
    /// Its ensemble members' fold models (the folds whose test predictions
    /// it averages).
    models: Vec<FoldModel>,
    /// Folds of its level-2 model whose test predictions it averages (none
    /// without `level2`).
    level2: Vec<u8>,
}

/// Every stage, in order, with its ensemble's fold models (members x the
/// folds whose test predictions it averages) and level-2 folds.
///
/// # Errors
/// [`Error::Usage`] for a stage without an ensemble.
fn stage_plans(spec: &JobSpec) -> Result<Vec<StagePlan>> {
    let mut out = Vec::new();
    for st in spec.stages() {
        let e = st.ensemble.ok_or_else(|| {
            Error::Usage(format!("stage `{}` of experiment `{}` has no [ensemble]: a package makes a submission from each stage's ensemble", st.name, spec.experiment))
        })?;
        let in_test = |f: &u8| e.test_folds.as_ref().is_none_or(|t| t.contains(f));
        let mut models = Vec::new();
        for name in &e.members {
            let m = spec.stage_model(st.key(), name)?;
            for f in m.fold_list(spec.folds.k).into_iter().filter(in_test) {
                models.push(FoldModel { stage: st.key().map(String::from), model: name.clone(), fold: f, spec_hash: spec.stage_model_hash(st.key(), m) });
            }
        }
        let level2 = if e.level2.is_some() { (0..spec.folds.k).filter(in_test).collect() } else { Vec::new() };
        out.push(StagePlan { key: st.key().map(String::from), name: st.name.to_string(), models, level2 });
    }
    Ok(out)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `dir/rel` (creating folders) and lists it.
fn write_file(dir: &Path, rel: &str, bytes: &[u8], files: &mut Vec<PackageFile>) -> Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(&path, bytes).map_err(io(&path))?;
    files.push(PackageFile { path: rel.to_string(), size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(bytes)) });
    Ok(())
}

/// Copies the tree `from` into `dir/rel`, keeping symbolic links (a
/// bundle's `lib/libx.so -> libx.so.1`) and executable bits.
fn copy_tree(from: &Path, dir: &Path, rel: &str, files: &mut Vec<PackageFile>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(from).map_err(io(from))?.collect::<std::io::Result<_>>().map_err(io(from))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let src = e.path();
        let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        let meta = std::fs::symlink_metadata(&src).map_err(io(&src))?;
        let dst = dir.join(&child);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src).map_err(io(&src))?;
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::os::unix::fs::symlink(&target, &dst).map_err(io(&dst))?;
        } else if meta.is_dir() {
            copy_tree(&src, dir, &child, files)?;
        } else {
            let bytes = std::fs::read(&src).map_err(io(&src))?;
            write_file(dir, &child, &bytes, files)?;
            std::fs::set_permissions(&dst, meta.permissions()).map_err(io(&dst))?;
        }
    }
    Ok(())
}

/// Whether `dir` is missing or empty.
fn is_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::Io { path: dir.to_path_buf(), source: e }),
    }
}

/// `imet package`: copies what test time needs from the spec's store into
/// `options.out` (built beside it, then renamed into place).
///
/// # Errors
/// [`Error::Usage`] for a non-empty `out` without `force`, a stage whose
/// ensemble or fold models are not committed for this spec, or a bundle
/// without `bin/imet`; [`Error::SpecChanged`] when the store's jobs were
/// committed by another version of the spec; [`Error::Format`] when a
/// weights file is not the one its train job committed; storage and I/O
/// errors.
pub async fn package(spec: &JobSpec, options: &PackageOptions) -> Result<PackageSummary> {
    let out = &options.out;
    let existing_list = std::fs::read(out.join(LIST_FILE)).ok();
    if !is_empty_dir(out)? && existing_list.is_none() && !options.force {
        return Err(Error::Usage(format!("--out {}: the folder is not empty and holds no package; name an empty or new folder, or pass --force to replace it", out.display())));
    }
    if let Some(b) = &options.bundle {
        if !b.join("bin/imet").is_file() {
            return Err(Error::Usage(format!("--bundle {}: no bin/imet in it; give the folder a relocatable bundle was written to (bin/imet and lib/)", b.display())));
        }
    }
    let packaged = packaged_spec(spec)?;
    let store = spec.open_store()?;
    let plans = stage_plans(spec)?;

    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "package".into());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let staging = tempfile::Builder::new().prefix(&format!(".{name}.partial-")).tempdir_in(parent).map_err(io(parent))?;
    let dir = staging.path();
    let mut files = Vec::new();

    // The data the jobs read besides the test images: the vocabulary, and
    // the run's test list (for `imet budget`; `imet infer` uses the test
    // folder's own).
    // A level-2 model's features include the training labels' statistics.
    let level2 = plans.iter().any(|p| !p.level2.is_empty());
    for key in [keys::LABELS, keys::SAMPLE_SUBMISSION].into_iter().chain(level2.then_some(keys::TRAIN)) {
        let bytes = store.get(key).await?;
        write_file(dir, &format!("{STORE_DIR}/{key}"), &bytes, &mut files)?;
    }
    for st in spec.stages() {
        let scope = Scope { experiment: &spec.experiment, stage: st.key() };
        let success = keys::ensemble_success(scope);
        let stage_arg = st.key().map(|s| format!(" --stage {s}")).unwrap_or_default();
        match Manifest::load(&store, &success).await? {
            None => {
                return Err(Error::Usage(format!(
                    "the ensemble of stage `{}` is not committed in {} (`{success}` is missing); run `imet run --spec <spec>` (or `imet ensemble --spec <spec>{stage_arg}`) first",
                    st.name,
                    store.url()
                )))
            }
            Some(m) if m.spec_hash != spec.stage_hash(st.name) => {
                return Err(Error::SpecChanged { key: success, expected: spec.stage_hash(st.name), found: m.spec_hash })
            }
            Some(_) => {}
        }
        let key = keys::thresholds(scope);
        let bytes = store.get(&key).await?;
        write_file(dir, &format!("{STORE_DIR}/{key}"), &bytes, &mut files)?;
    }
    let mut labels = Vec::new();
    for plan in &plans {
        let scope = Scope { experiment: &spec.experiment, stage: plan.key.as_deref() };
        let stage_arg = plan.key.as_ref().map(|s| format!(" --stage {s}")).unwrap_or_default();
        for &f in &plan.level2 {
            let success = keys::success(scope, crate::level2::MEMBER, Fold(f));
            let label = format!("{}/{}/fold={f}", plan.name, crate::level2::MEMBER);
            let m = Manifest::load(&store, &success).await?.ok_or_else(|| {
                Error::Usage(format!("level-2 fold {label} is not committed in {} (`{success}` is missing); run `imet level2 --spec <spec> --fold {f}{stage_arg}` (or `imet run`) first", store.url()))
            })?;
            if m.spec_hash != spec.stage_hash(&plan.name) {
                return Err(Error::SpecChanged { key: success, expected: spec.stage_hash(&plan.name), found: m.spec_hash });
            }
            let key = crate::level2::job::model_key(scope, Fold(f));
            let entry = m.outputs.iter().find(|o| o.key == key).ok_or_else(|| {
                Error::Usage(format!(
                    "`{success}` lists no `{key}`: the job was committed by an imet that did not save level-2 models; delete that manifest and run `imet level2 --spec <spec> --fold {f}{stage_arg}` again"
                ))
            })?;
            let bytes = store.get(&key).await?;
            if OutputEntry::of_bytes(&key, &bytes) != *entry {
                return Err(Error::Format { key, what: "level-2 model", reason: format!("it is not the file `{success}` lists; the store was changed after the job: run it again") });
            }
            write_file(dir, &format!("{STORE_DIR}/{key}"), &bytes, &mut files)?;
            labels.push(label);
        }
    }
    for fm in plans.iter().flat_map(|p| &p.models) {
        let scope = Scope { experiment: &spec.experiment, stage: fm.stage.as_deref() };
        let fold = Fold(fm.fold);
        let label = format!("{}/{}/fold={}", fm.stage.as_deref().unwrap_or(MAIN), fm.model, fm.fold);
        let trained_key = keys::trained(scope, &fm.model, fold);
        let stage_arg = fm.stage.as_ref().map(|s| format!(" --stage {s}")).unwrap_or_default();
        let trained = Manifest::load(&store, &trained_key).await?.ok_or_else(|| {
            Error::Usage(format!(
                "fold model {label} is not trained in {} (`{trained_key}` is missing); run `imet train --spec <spec> --model {} --fold {}{stage_arg}` (or `imet run`) first",
                store.url(),
                fm.model,
                fm.fold
            ))
        })?;
        if trained.spec_hash != fm.spec_hash {
            return Err(Error::SpecChanged { key: trained_key, expected: fm.spec_hash.clone(), found: trained.spec_hash });
        }
        let weights_key = keys::weights(scope, &fm.model, fold);
        let weights = store.get(&weights_key).await?;
        let entry = OutputEntry::of_bytes(&weights_key, &weights);
        if !trained.outputs.contains(&entry) {
            return Err(Error::Format {
                key: weights_key,
                what: "fold model",
                reason: format!("its sha256 {} is not the one `{trained_key}` lists; the store was changed after training: train the fold again", entry.sha256),
            });
        }
        write_file(dir, &format!("{STORE_DIR}/{weights_key}"), &weights, &mut files)?;
        drop(weights);
        let trained_bytes = store.get(&trained_key).await?;
        write_file(dir, &format!("{STORE_DIR}/{trained_key}"), &trained_bytes, &mut files)?;
        let stats_key = keys::predict_stats(scope, &fm.model, fold);
        if let Some(bytes) = store.get_opt(&stats_key).await? {
            write_file(dir, &format!("{STORE_DIR}/{stats_key}"), &bytes, &mut files)?;
        }
        info!(model = %label, bytes = entry.size, "fold model packaged");
        labels.push(label);
    }
    write_file(dir, SPEC_FILE, packaged.to_toml().as_bytes(), &mut files)?;
    match &options.bundle {
        Some(b) => copy_tree(b, dir, "", &mut files)?,
        None => {
            let bytes = std::fs::read(&options.program).map_err(io(&options.program))?;
            write_file(dir, "bin/imet", &bytes, &mut files)?;
            let bin = dir.join("bin/imet");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).map_err(io(&bin))?;
        }
    }
    write_file(dir, "README.md", readme(spec, options.bundle.is_some()).as_bytes(), &mut files)?;
    write_file(dir, "run.sh", RUN_SH.as_bytes(), &mut files)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let run = dir.join("run.sh");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).map_err(io(&run))?;
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let list = PackageList {
        version: PACKAGE_VERSION,
        experiment: spec.experiment.clone(),
        imet_version: env!("CARGO_PKG_VERSION").to_string(),
        source_root: store.url().to_string(),
        stages: spec.stages().iter().map(|s| s.name.to_string()).collect(),
        models: labels.clone(),
        bundle: options.bundle.is_some(),
        files: files.clone(),
    };
    let list_bytes = serde_json::to_vec_pretty(&list)?;
    let bytes: u64 = files.iter().map(|f| f.size).sum::<u64>() + list_bytes.len() as u64;
    let unchanged = existing_list.as_deref() == Some(&list_bytes[..]) && verify(out, &list).is_ok();
    if unchanged {
        info!(out = %out.display(), "the folder already holds this package");
    } else {
        if !is_empty_dir(out)? && !options.force {
            return Err(Error::Usage(format!(
                "--out {}: the folder holds another package (of `{}`, or of other files); pass --force to replace it, or name another folder",
                out.display(),
                serde_json::from_slice::<PackageList>(existing_list.as_deref().unwrap_or_default()).map(|l| l.experiment).unwrap_or_else(|_| "?".into())
            )));
        }
        std::fs::write(dir.join(LIST_FILE), &list_bytes).map_err(io(&dir.join(LIST_FILE)))?;
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(io(out))?;
        }
        let staged = staging.keep();
        std::fs::rename(&staged, out).map_err(io(out))?;
    }
    let tar = match &options.tar {
        Some(t) => {
            write_tar(out, &name, t)?;
            Some(t.clone())
        }
        None => None,
    };
    Ok(PackageSummary { out: out.clone(), unchanged, files: files.len() + 1, bytes, models: labels, tar })
}

/// Checks every file `list` names under `dir` (size and sha256).
///
/// # Errors
/// [`Error::Usage`] naming the first missing or changed file.
pub fn verify(dir: &Path, list: &PackageList) -> Result<()> {
    for f in &list.files {
        let path = dir.join(&f.path);
        let bytes = std::fs::read(&path).map_err(|e| Error::Usage(format!("package {}: `{}` is missing ({e}); copy the whole package", dir.display(), f.path)))?;
        if bytes.len() as u64 != f.size || hex::encode(Sha256::digest(&bytes)) != f.sha256 {
            return Err(Error::Usage(format!("package {}: `{}` is not the file {LIST_FILE} lists (size or sha256 differ); copy the package again", dir.display(), f.path)));
        }
    }
    Ok(())
}

/// Writes `dir` as a tar file whose entries start with `name/`, files in
/// path order with zero times and owners (the same package, the same
/// bytes), through a temporary file renamed into place.
fn write_tar(dir: &Path, name: &str, path: &Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = tempfile::NamedTempFile::new_in(parent).map_err(io(parent))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    let mut stack = vec![(dir.to_path_buf(), name.to_string())];
    let mut entries = Vec::new();
    while let Some((d, rel)) = stack.pop() {
        let mut list: Vec<_> = std::fs::read_dir(&d).map_err(io(&d))?.collect::<std::io::Result<_>>().map_err(io(&d))?;
        list.sort_by_key(|e| e.file_name());
        for e in list {
            let child = format!("{rel}/{}", e.file_name().to_string_lossy());
            let ft = e.file_type().map_err(io(&e.path()))?;
            if ft.is_dir() {
                stack.push((e.path(), child));
            } else {
                entries.push((e.path(), child));
            }
        }
    }
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    for (p, rel) in entries {
        b.append_path_with_name(&p, &rel).map_err(io(&p))?;
    }
    let w = b.into_inner().map_err(io(path))?;
    drop(w);
    tmp.persist(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e.error })?;
    Ok(())
}

/// The package's `run.sh`: `imet infer` of the package's own folder.
const RUN_SH: &str = r#"#!/bin/sh
# Makes submission.csv from a folder of test images, offline:
#   ./run.sh TEST_ROOT [OUT_CSV] [WORK_DIR]
# TEST_ROOT holds sample_submission.csv and test/{id}.png (Kaggle's layout),
# or data/ with them. WORK_DIR (default ./imet-work) must be writable.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/bin/imet" infer --package "$here" --data "$1" --out "${2:-submission.csv}" --work "${3:-imet-work}"
"#;

/// The package's README: what it holds and how to run it.
fn readme(spec: &JobSpec, bundle: bool) -> String {
    let binary = if bundle {
        "`bin/imet` comes from a relocatable bundle: it finds the libtorch in `lib/` by itself.".to_string()
    } else {
        format!(
            "`bin/imet` is the imet {} executable the package was made with. It needs libtorch 2.11.0 (the build it was \
             linked against): it finds it by the RUNPATH it was built with (`readelf -d bin/imet | grep RUNPATH`), so \
             on another machine either put a libtorch 2.11.0 at that path, or set `LD_LIBRARY_PATH` to a libtorch 2.11.0 \
             `lib` folder (PyPI's `torch==2.11.0` wheel has one under `torch/lib`). Packages made with `--bundle` carry \
             their libtorch.",
            env!("CARGO_PKG_VERSION")
        )
    };
    format!(
        "# imet offline package: experiment `{exp}`\n\n\
         Everything test time needs to turn the competition's test images into\n\
         `submission.csv` without internet: the fold models of every ensemble\n\
         member, each stage's saved blend and thresholds (`thresholds.json`),\n\
         and the spec (`spec.toml`, test-only inference). No training image,\n\
         no checkpoint and no out-of-fold prediction is in it; `package.json`\n\
         lists every file with its sha256.\n\n\
         ```sh\n\
         ./run.sh /kaggle/input/imet-2019-fgvc6 submission.csv   # TEST_ROOT has sample_submission.csv and test/\n\
         bin/imet budget --package . --budget 9h                 # test-time hours from the measured throughput\n\
         ```\n\n\
         `run.sh` runs `bin/imet infer`, which writes its jobs' outputs under\n\
         `./imet-work` (a third argument moves it), on the GPU when there is\n\
         one (`IMET_DEVICE=cpu` forces the CPU). Run it again after an\n\
         interruption: finished jobs are skipped.\n\n\
         {binary}\n",
        exp = spec.experiment
    )
}

/// What `imet infer` reads and writes.
#[derive(Clone, Debug)]
pub struct InferOptions {
    /// The package folder.
    pub package: PathBuf,
    /// The test root: `sample_submission.csv` and `test/`, or `data/` with them.
    pub data: PathBuf,
    /// A writable folder for the jobs' store.
    pub work: PathBuf,
    /// Where the submission is copied.
    pub out: PathBuf,
}

/// What `imet infer` did.
#[derive(Clone, Debug, Serialize)]
pub struct InferSummary {
    pub experiment: String,
    pub test_images: usize,
    /// Predict jobs run and skipped (committed by an earlier run).
    pub predicted: usize,
    pub skipped: usize,
    /// Each stage's chosen threshold strategy.
    pub strategies: Vec<(String, String)>,
    pub submission: PathBuf,
    pub seconds: f64,
}

impl InferSummary {
    pub fn render(&self) -> String {
        format!(
            "experiment `{}`: {} test images, {} fold predictions ({} already done), strategies {:?}, {:.1} s\nsubmission: {}\n",
            self.experiment,
            self.test_images,
            self.predicted + self.skipped,
            self.skipped,
            self.strategies,
            self.seconds,
            self.submission.display()
        )
    }
}

/// The spec of the package at `dir`, its store root the package's own
/// `store/` folder (for `imet budget --package`).
///
/// # Errors
/// [`Error::Usage`] when `dir` holds no package spec; spec errors.
pub fn package_spec(dir: &Path) -> Result<JobSpec> {
    let path = dir.join(SPEC_FILE);
    if !path.is_file() {
        return Err(Error::Usage(format!("--package {}: no {SPEC_FILE} in it; give the folder `imet package` wrote", dir.display())));
    }
    let mut spec = JobSpec::load(&path)?;
    let store = std::path::absolute(dir.join(STORE_DIR)).map_err(io(dir))?;
    spec.storage.root = format!("file://{}", store.display());
    Ok(spec)
}

/// The folder holding `sample_submission.csv` and `test/` under `root`
/// (Kaggle's layout, or a store root's `data/`).
fn test_folder(root: &Path) -> Result<PathBuf> {
    for d in [root.to_path_buf(), root.join("data")] {
        if d.join("sample_submission.csv").is_file() && d.join("test").is_dir() {
            return Ok(d);
        }
    }
    Err(Error::Usage(format!(
        "--data {}: neither it nor its data/ folder holds sample_submission.csv and test/; give the folder of the competition's test files",
        root.display()
    )))
}

/// Links `dst` to `target` (absolute), replacing an older link.
fn link(target: &Path, dst: &Path) -> Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(dst) {
        if meta.file_type().is_symlink() {
            if std::fs::read_link(dst).ok().as_deref() == Some(target) {
                return Ok(());
            }
            std::fs::remove_file(dst).map_err(io(dst))?;
        } else {
            // A file a job wrote in place of the link (none does for these).
            return Ok(());
        }
    }
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::os::unix::fs::symlink(target, dst).map_err(io(dst))
}

/// `imet infer`: the package's stages, test-only, over the test root.
///
/// # Errors
/// [`Error::Usage`] for a folder that is not an intact package, a test
/// root without its files, `IMET_ROOT` set, or a work folder used for
/// another test set; the jobs' errors.
pub async fn infer(options: &InferOptions) -> Result<InferSummary> {
    let started = std::time::Instant::now();
    if std::env::var_os(crate::storage::config::ROOT_ENV).is_some() {
        return Err(Error::Usage(format!("{} is set; `imet infer` uses its --work folder as the store: unset it", crate::storage::config::ROOT_ENV)));
    }
    let package = std::path::absolute(&options.package).map_err(io(&options.package))?;
    let list_path = package.join(LIST_FILE);
    let list: PackageList = serde_json::from_slice(&std::fs::read(&list_path).map_err(|e| {
        Error::Usage(format!("--package {}: no readable {LIST_FILE} ({e}); give the folder `imet package` wrote", package.display()))
    })?)
    .map_err(|e| Error::Format { key: list_path.display().to_string(), what: "package list", reason: e.to_string() })?;
    verify(&package, &list)?;
    let mut spec = package_spec(&package)?;
    if !spec.inference.test_only() {
        return Err(Error::Usage(format!("--package {}: its spec does not set `[inference] oof = false`; make the package with `imet package`", package.display())));
    }
    let test_dir = std::path::absolute(test_folder(&options.data)?).map_err(io(&options.data))?;
    let work = std::path::absolute(&options.work).map_err(io(&options.work))?;
    std::fs::create_dir_all(work.join("data")).map_err(io(&work))?;
    // The work store: the package's vocabulary, the test root's list and
    // images, links to the package's fold models and thresholds.
    let sub = std::fs::read(test_dir.join("sample_submission.csv")).map_err(io(&test_dir))?;
    let sub_dst = work.join(keys::SAMPLE_SUBMISSION);
    if let Ok(old) = std::fs::read(&sub_dst) {
        if old != sub {
            return Err(Error::Usage(format!(
                "--work {}: it holds the predictions of another test set (its {} differs); remove it or name another --work folder",
                work.display(),
                keys::SAMPLE_SUBMISSION
            )));
        }
    }
    std::fs::write(&sub_dst, &sub).map_err(io(&sub_dst))?;
    // The package's vocabulary (and training labels, for a level-2 model).
    for key in [keys::LABELS, keys::TRAIN] {
        let src = package.join(STORE_DIR).join(key);
        if key == keys::LABELS || src.is_file() {
            std::fs::copy(&src, work.join(key)).map_err(io(&src))?;
        }
    }
    link(&test_dir.join("test"), &work.join("data/test"))?;
    for f in &list.files {
        let Some(key) = f.path.strip_prefix(&format!("{STORE_DIR}/")) else { continue };
        if key.starts_with("runs/") && !key.ends_with("/predict_stats.json") {
            link(&package.join(&f.path), &work.join(key))?;
        }
    }
    spec.storage.root = format!("file://{}", work.display());
    let store: Store = spec.open_store()?;
    let (_, test) = crate::data::load_test_inputs(&store).await?;

    let (mut predicted, mut skipped) = (0, 0);
    let mut strategies = Vec::new();
    let mut last = None;
    for plan in stage_plans(&spec)? {
        let stage = plan.key.as_deref();
        for m in &plan.models {
            let o = crate::jobs::predict(&spec, stage, &m.model, Fold(m.fold)).await?;
            if o.skipped {
                skipped += 1;
            } else {
                predicted += 1;
            }
        }
        for &f in &plan.level2 {
            crate::jobs::level2(&spec, stage, Fold(f)).await?;
        }
        let s = crate::jobs::ensemble(&spec, stage).await?;
        info!(stage = %plan.name, chosen = %s.chosen, "stage applied");
        strategies.push((plan.name.clone(), s.chosen));
        last = Some(plan.key);
    }
    let last = last.ok_or_else(|| Error::Usage(format!("package of `{}` has no ensemble member", spec.experiment)))?;
    let key = keys::submission(Scope { experiment: &spec.experiment, stage: last.as_deref() });
    let csv = store.get(&key).await?;
    if let Some(parent) = options.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(&options.out, &csv).map_err(io(&options.out))?;
    Ok(InferSummary {
        experiment: spec.experiment.clone(),
        test_images: test.ids.len(),
        predicted,
        skipped,
        strategies,
        submission: options.out.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
experiment = "p"
[storage]
root = "memory://"
cache_dir = "/tmp/cache"
[folds]
k = 3
[[models]]
name = "a"
arch = "resnet18"
size = 32
train = { batch_size = 4, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
[[models]]
name = "b"
arch = "resnet18"
size = 32
folds = [0, 1]
train = { batch_size = 4, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
[ensemble]
members = ["a", "b"]
test_folds = [1, 2]
[cluster]
image = "x"
"#;

    #[test]
    fn the_packaged_spec_reads_its_own_store_test_only_with_every_hash_kept() {
        let spec = JobSpec::parse("p.toml", SPEC).unwrap();
        let p = packaged_spec(&spec).unwrap();
        assert_eq!((p.storage.root.as_str(), p.storage.cache_dir.is_none()), (STORE_DIR, true));
        assert!(p.inference.test_only() && p.inference.ensemble == EnsembleMode::Apply);
        assert_eq!(p.hash(), spec.hash());
        for m in &spec.models {
            assert_eq!(p.model_hash(m), spec.model_hash(m));
        }
        let text = p.to_toml();
        assert!(text.contains("[inference]") && text.contains("oof = false") && text.contains("ensemble = \"apply\""), "{text}");
        assert!(!text.contains("[cluster]"), "{text}");
    }

    #[test]
    fn a_package_holds_the_folds_each_member_gives_the_test_blend() {
        let spec = JobSpec::parse("p.toml", SPEC).unwrap();
        let plans = stage_plans(&spec).unwrap();
        let got: Vec<String> = plans[0].models.iter().map(|m| format!("{}{}", m.model, m.fold)).collect();
        assert_eq!(got, ["a1", "a2", "b1"]);
        assert!(plans[0].level2.is_empty());
    }

    #[test]
    fn a_level2_stage_packages_its_fold_models_and_the_members_on_every_test_fold() {
        let text = SPEC.replace("test_folds = [1, 2]", "test_folds = [0, 2]\nlevel2 = { top_k = 5 }").replace("folds = [0, 1]\n", "");
        let spec = JobSpec::parse("p.toml", &text).unwrap();
        assert!(packaged_spec(&spec).is_ok());
        let plans = stage_plans(&spec).unwrap();
        let got: Vec<String> = plans[0].models.iter().map(|m| format!("{}{}", m.model, m.fold)).collect();
        assert_eq!(got, ["a0", "a2", "b0", "b2"]);
        assert_eq!(plans[0].level2, [0, 2]);
    }

    #[test]
    fn the_tar_of_a_folder_is_the_same_bytes_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("pkg");
        std::fs::create_dir_all(pkg.join("store/x")).unwrap();
        std::fs::write(pkg.join("store/x/a.bin"), b"abc").unwrap();
        std::fs::write(pkg.join("README.md"), b"hi").unwrap();
        write_tar(&pkg, "pkg", &dir.path().join("one.tar")).unwrap();
        write_tar(&pkg, "pkg", &dir.path().join("two.tar")).unwrap();
        let one = std::fs::read(dir.path().join("one.tar")).unwrap();
        assert_eq!(one, std::fs::read(dir.path().join("two.tar")).unwrap());
        let mut names = Vec::new();
        for e in tar::Archive::new(&one[..]).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["pkg/README.md", "pkg/store/x/a.bin"]);
    }
}
