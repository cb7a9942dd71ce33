//! The `imet` command line: parses arguments, starts logging, calls one
//! library function per subcommand.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use imet::telemetry::{self, LogFormat};
use imet::JobSpec;
use std::path::PathBuf;
use tracing::{info_span, Instrument};

#[derive(Parser)]
#[command(name = "imet", version, about = "Train, predict and ensemble iMet Collection 2019 classifiers as jobs over an object store", after_help = environment_help())]
struct Cli {
    /// Log line format (also IMET_LOG_FORMAT); filter with RUST_LOG.
    #[arg(long, global = true, env = "IMET_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The environment variables the program reads (names, meaning), listed
/// by `imet --help` and the man page.
const ENVIRONMENT: [(&str, &str); 12] = [
    ("IMET_ROOT", "Store root used instead of the spec storage.root (file:///abs/path, s3://bucket/prefix, or a path)"),
    ("IMET_DEVICE", "`cpu` runs jobs on the CPU; otherwise CUDA when available"),
    ("IMET_LOG_FORMAT", "Log lines on stderr: `text` (default) or `json` (as --log-format)"),
    ("RUST_LOG", "Log filter, e.g. `info` (default), `debug`, `imet=debug`"),
    ("IMET_PROGRESS_SECS", "Seconds between progress log lines when stderr is not a terminal (default 10; 0: every update)"),
    ("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN", "Credentials for s3:// stores"),
    ("AWS_REGION, AWS_DEFAULT_REGION", "Region of s3:// stores (us-east-1 when neither is set)"),
    ("AWS_ENDPOINT_URL, AWS_ENDPOINT", "S3-compatible endpoint (MinIO, ...); http:// URLs are allowed"),
    ("AWS_*", "Any other setting of the S3 client (AWS_ALLOW_HTTP, AWS_WEB_IDENTITY_TOKEN_FILE, ...)"),
    ("SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX", "The fold of `--fold env` (a batch engine's array index)"),
    ("OMP_NUM_THREADS, RAYON_NUM_THREADS", "Threads per job; `imet run` sets them to share the cores unless set"),
    ("IMET_GPUS", "GPUs `imet run` gives jobs, one each (as --gpus); CUDA_VISIBLE_DEVICES of each job is set from it"),
];

/// [`ENVIRONMENT`] as a help section.
fn environment_help() -> String {
    let mut s = String::from("Environment:");
    for (names, meaning) in ENVIRONMENT {
        if names.len() <= 16 {
            s += &format!("\n  {names:<16}  {meaning}");
        } else {
            s += &format!("\n  {names}\n  {:<16}  {meaning}", "");
        }
    }
    s
}

/// The man page of `cmd` (imet or one subcommand); imet's own has an
/// ENVIRONMENT section (from [`ENVIRONMENT`]) instead of the help's text.
fn man_page(cmd: clap::Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap_mangen::roff::{bold, roman, Roff};
    let top = cmd.get_name() == "imet";
    let cmd = cmd.after_help(None::<&'static str>);
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_uppercase();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).title(name).manual("imet manual").render(&mut page)?;
    let mut page = String::from_utf8(page).expect("clap_mangen writes UTF-8");
    if top {
        let mut env = Roff::default();
        env.control("SH", ["ENVIRONMENT"]);
        for (names, meaning) in ENVIRONMENT {
            env.control("TP", []).text([bold(names)]).text([roman(meaning)]);
        }
        let at = page.find(".SH VERSION").unwrap_or(page.len());
        page.insert_str(at, &env.to_roff());
    }
    out.write_all(page.as_bytes())
}

/// Writes imet.1 and imet-{subcommand}.1 into `dir`.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    for c in std::iter::once(cmd.clone()).chain(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned()) {
        let path = dir.join(format!("{}.1", c.get_display_name().unwrap_or(c.get_name())));
        let mut file = std::fs::File::create(&path)?;
        man_page(c, &mut file)?;
        written.push(path);
    }
    Ok(written)
}

#[derive(Subcommand)]
enum Command {
    /// Show the libtorch build and the devices it can use.
    Info,
    /// Check labels.csv, train.csv and sample_submission.csv under a root.
    Validate {
        /// Store root holding data/ (file:///abs, s3://bucket/prefix, or a path).
        #[arg(long)]
        data: String,
    },
    /// Assign cross-validation folds (multi-label iterative stratification).
    Folds {
        /// Experiment spec (its storage root, data and [folds] section).
        #[arg(long, conflicts_with_all = ["data", "k", "seed", "experiment"], required_unless_present = "data")]
        spec: Option<PathBuf>,
        /// Override a value of the spec, `KEY.PATH=VALUE` (repeatable), e.g. `folds.k=10`.
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "spec")]
        set: Vec<imet::spec::Override>,
        /// Store root holding data/ (file:///abs, s3://bucket/prefix, or a path).
        #[arg(long)]
        data: Option<String>,
        /// Number of folds, 2 to 40.
        #[arg(long, default_value_t = 5)]
        k: u8,
        /// Seed of the fold assignment.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Writes runs/{experiment}/folds.parquet.
        #[arg(long, default_value = "folds")]
        experiment: String,
    },
    /// Write the synthetic sample (real vocabulary and layout, learnable images).
    Sample {
        /// Store root to write data/ under (file:///abs, s3://bucket/prefix, or a path).
        #[arg(long)]
        out: String,
        /// Training images to draw.
        #[arg(long, default_value_t = 600)]
        train: usize,
        /// Test images to draw.
        #[arg(long, default_value_t = 200)]
        test: usize,
        /// Seed of the drawing (same seed, same images).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Number of most frequent classes the labels are drawn from.
        #[arg(long, default_value_t = 30)]
        classes: usize,
        /// Fraction of training images given another image's labels (which ones goes to truth/noisy.csv).
        #[arg(long, default_value_t = 0.0)]
        noise: f64,
    },
    /// Blend every member's predictions, fit thresholds on OOF F2, write the submission.
    Ensemble {
        #[command(flatten)]
        spec: SpecArg,
        /// A later stage (`[[stages]] name`); the first stage when unset.
        #[arg(long)]
        stage: Option<String>,
    },
    /// One fold of a stage's second-level model (`[ensemble] level2`): fitted on the other folds' members' predictions.
    Level2 {
        #[command(flatten)]
        spec: SpecArg,
        /// Fold number, or `env` for the batch engine's array index.
        #[arg(long)]
        fold: String,
        /// A later stage (`[[stages]] name`); the first stage when unset.
        #[arg(long)]
        stage: Option<String>,
    },
    /// Pack a spec's training or test images into a shard set ([image.shards]) for `[image] source = "shards"`.
    Shard {
        #[command(flatten)]
        spec: SpecArg,
        /// Which images to pack.
        #[arg(long, value_enum)]
        split: ShardSplit,
    },
    /// A later stage's data edits (dropped noisy images, pseudo-labels, distillation targets) from its source stage's ensemble.
    Curate {
        #[command(flatten)]
        spec: SpecArg,
        /// The stage (`[[stages]] name`).
        #[arg(long)]
        stage: String,
    },
    /// Score a predictions parquet against a train.csv-format truth file (prints JSON).
    Eval {
        /// Predictions file (path or URL) following schemas/predictions.parquet.json.
        #[arg(long)]
        pred: String,
        /// Truth as `id,attribute_ids` CSV (path or URL), e.g. data/train.csv.
        #[arg(long)]
        truth: String,
        /// labels.csv (path or URL), for culture/tag scores.
        #[arg(long)]
        labels: Option<String>,
        /// Threshold to apply; the best global one when omitted.
        #[arg(long)]
        threshold: Option<f32>,
    },
    /// Train one fold of one model of a spec (resumes from its newest
    /// checkpoint; a committed fold is skipped).
    Train(FoldJob),
    /// OOF and test probabilities (TTA-averaged) of one trained fold model.
    Predict(FoldJob),
    /// Run an experiment's whole job DAG on this machine as child processes, resuming where it stopped.
    Run {
        #[command(flatten)]
        spec: SpecArg,
        /// Jobs at a time.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// GPUs to give jobs, one each: a count (`2`) or ids (`0,2,3`) [default: the GPUs libtorch sees].
        #[arg(long, env = "IMET_GPUS", value_name = "N|IDS")]
        gpus: Option<String>,
        /// Run the spec's smoke version instead: sample data, tiny inputs, one epoch per phase, under out/smoke/.
        #[arg(long)]
        smoke: bool,
        /// Job logs folder [default: {root}/logs/{experiment} for a local root, else .imet/logs/{experiment}].
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// The program every job runs [default: this executable] (tests, wrappers).
        #[arg(long, hide = true)]
        program: Option<PathBuf>,
        /// Run again the jobs that are stale (committed by an earlier version of the spec, or made from upstream outputs committed again since) instead of failing them; their old manifests are kept beside.
        #[arg(long)]
        rerun_stale: bool,
    },
    /// List (or with --delete remove) what the store holds that the spec no longer needs: stale jobs, superseded checkpoints, dead leases, staging files.
    Gc {
        #[command(flatten)]
        spec: SpecArg,
        /// Delete what is listed (the default is a dry run).
        #[arg(long)]
        delete: bool,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where an experiment stands, from its store: jobs done and pending, train checkpoints, the OOF F2.
    Status {
        #[command(flatten)]
        spec: SpecArg,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Estimate each ensemble member's test-time hours and which fit an inference budget.
    Budget {
        #[command(flatten)]
        spec: Option<SpecArg>,
        /// An offline package (`imet package --out DIR`) instead of --spec: its spec and measured throughput.
        #[arg(long, conflicts_with_all = ["spec", "set"], required_unless_present = "spec")]
        package: Option<PathBuf>,
        /// The budget, e.g. `9h`, `90m`, `1h30m`.
        #[arg(long, default_value = "9h")]
        budget: String,
        /// Test images [default: rows of data/sample_submission.csv in the store].
        #[arg(long)]
        test_images: Option<usize>,
        /// Time the networks here even when earlier runs measured them.
        #[arg(long)]
        calibrate: bool,
        /// Forward batches timed per calibrated member.
        #[arg(long, default_value_t = 3)]
        calibration_batches: usize,
        /// Print the estimate as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Collect what test time needs (binary, fold models, saved blends and thresholds, spec) into an offline package.
    Package {
        #[command(flatten)]
        spec: SpecArg,
        /// The package folder (created; refused when it holds something else, unless --force).
        #[arg(long)]
        out: PathBuf,
        /// A relocatable bundle folder (bin/imet and lib/) copied instead of this executable.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Also write the package as one tar file (entries under the folder's name).
        #[arg(long)]
        tar: Option<PathBuf>,
        /// Replace a non-empty --out folder.
        #[arg(long)]
        force: bool,
    },
    /// Make submission.csv from a test folder with an offline package: test-only predictions, saved thresholds.
    Infer {
        /// The package folder (`imet package --out`).
        #[arg(long)]
        package: PathBuf,
        /// The test root: sample_submission.csv and test/{id}.png (or a data/ folder with them).
        #[arg(long)]
        data: PathBuf,
        /// Writable folder for the jobs' outputs (rerun with the same one to resume).
        #[arg(long, default_value = "imet-work")]
        work: PathBuf,
        /// Where to write the submission.
        #[arg(long, default_value = "submission.csv")]
        out: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the experiment's job DAG: dependencies, command lines, resources.
    Plan {
        #[command(flatten)]
        spec: SpecArg,
        /// Print the plan as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also estimate the ensemble's test-time hours against this budget (e.g. `9h`); see `imet budget`.
        #[arg(long)]
        budget: Option<String>,
        /// Test images for --budget [default: rows of data/sample_submission.csv in the store].
        #[arg(long, requires = "budget")]
        test_images: Option<usize>,
    },
    /// Submit the experiment's jobs not yet committed to a batch engine.
    Submit {
        #[command(flatten)]
        spec: SpecArg,
        /// The batch engine to submit to.
        #[arg(long, value_enum)]
        engine: SubmitEngine,
        /// Folder for scripts and logs (default .imet/slurm/{experiment}).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the scripts and submit.sh without submitting.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the experiment's manifests for a batch engine (validated offline in CI).
    Render {
        #[command(flatten)]
        spec: SpecArg,
        /// The batch engine to write manifests for.
        #[arg(long, value_enum)]
        engine: RenderEngine,
        /// Folder to write the manifests into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Learning curves: a PNG per model, best epochs and F2, folds not trained yet.
    ///
    /// Reads every fold's history.parquet; writes runs/{experiment}/report/curves-{model}.png
    /// (losses and validation F2 by epoch, a line per fold) and curves.json; lists the
    /// ensemble's plots when it has run.
    Report {
        #[command(flatten)]
        spec: SpecArg,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also copy the PNGs and curves.json into this local folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the resolved spec (file and `--set` overrides, validated) as TOML.
    Spec {
        #[command(flatten)]
        spec: SpecArg,
    },
    /// Print the JSON Schema of experiment specs (schemas/spec.schema.json).
    Schema,
    /// Print a shell completion script, e.g. `imet completions bash > /etc/bash_completion.d/imet`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one page per subcommand (imet.1, imet-train.1, ...) into --out.
    Man {
        /// Folder to write the pages into, instead of printing imet(1).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ShardSplit {
    /// The training images (data/train.csv).
    Train,
    /// The test images (data/sample_submission.csv).
    Test,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SubmitEngine {
    /// Slurm job arrays with dependencies (sbatch).
    Slurm,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RenderEngine {
    /// Kubernetes indexed Jobs.
    K8s,
    /// AWS Batch array jobs.
    AwsBatch,
}

/// The experiment spec a command reads, with `--set` overrides.
#[derive(clap::Args, Clone)]
struct SpecArg {
    /// Experiment spec (TOML).
    #[arg(long)]
    spec: PathBuf,
    /// Override a value of the spec, `KEY.PATH=VALUE` (repeatable), e.g.
    /// `models[r18].train.batch_size=16`, `stages[clean].drop_noisy.fraction=0.1`:
    /// array elements by position (`[0]`) or by `name`; the value is TOML
    /// (`16`, `true`, `"s"`, `[1, 2]`), else a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<imet::spec::Override>,
}

impl SpecArg {
    /// The spec file with its overrides.
    fn source(&self) -> imet::spec::SpecSource {
        imet::spec::SpecSource::new(&self.spec, self.set.clone())
    }

    /// The spec, overrides applied, validated.
    fn load(&self) -> anyhow::Result<JobSpec> {
        Ok(self.source().load()?)
    }
}

/// The fold job `train` and `predict` address.
#[derive(clap::Args)]
struct FoldJob {
    #[command(flatten)]
    spec: SpecArg,
    /// A `name` of the spec's `[[models]]`.
    #[arg(long)]
    model: String,
    /// Fold number, or `env` for the batch engine's array index
    /// (SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX;
    /// mapped through IMET_FOLDS when set).
    #[arg(long)]
    fold: String,
    /// A later stage (`[[stages]] name`); the first stage when unset.
    #[arg(long)]
    stage: Option<String>,
}

impl FoldJob {
    /// The loaded spec and the fold.
    fn resolve(&self) -> anyhow::Result<(JobSpec, imet::ids::Fold)> {
        let spec = self.spec.load()?;
        let fold = imet::fold_job::parse_fold(&self.fold, spec.folds.k)?;
        Ok((spec, fold))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = cli.log_format == LogFormat::Json;
    telemetry::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The first imet error in the chain says what kind of failure it
            // was (README: exit status).
            let kind = e.chain().find_map(|c| c.downcast_ref::<imet::Error>()).map_or(imet::error::ExitKind::Failure, |e| e.exit_kind());
            if json {
                tracing::error!(error = %format!("{e:#}"), exit = kind.code(), kind = ?kind, "job failed");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::from(kind.code())
        }
    }
}

/// Prints a command's result as pretty JSON.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `imet predict` of one fold model, printing its outcome (also run by
/// `imet train` when the model's `predict_after` is set).
async fn predict_fold(spec: &JobSpec, stage: Option<&str>, model: &str, fold: imet::ids::Fold) -> anyhow::Result<()> {
    let out = imet::jobs::predict(spec, stage, model, fold)
        .await
        .with_context(|| format!("predicting model `{model}` fold {} of experiment `{}`", fold.0, spec.experiment))?;
    print_json(&out)
}

/// Prints a report as JSON or as its text rendering.
fn print_report<T: serde::Serialize>(value: &T, json: bool, render: impl Fn(&T) -> String) -> anyhow::Result<()> {
    if json {
        print_json(value)
    } else {
        print!("{}", render(value));
        Ok(())
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Info => {
            println!("imet {}", env!("CARGO_PKG_VERSION"));
            print_json(&imet::device_info())
        }
        Command::Validate { data } => {
            let url = imet::storage::root_to_url(&data)?;
            let store = imet::storage::Store::open(&url)?;
            let inputs = imet::data::load_inputs(&store)
                .instrument(info_span!("job", kind = "validate"))
                .await
                .with_context(|| format!("validating the inputs under {url}"))?;
            println!("ok: {} classes, {} training images, {} test images", inputs.vocab.len(), inputs.train.len(), inputs.test.ids.len());
            Ok(())
        }
        Command::Folds { spec, set, data, k, seed, experiment } => {
            let spec = match (spec, data) {
                (Some(path), _) => imet::spec::SpecSource::new(path, set).load()?,
                (None, Some(root)) => JobSpec::adhoc_folds(&root, &experiment, k, seed)?,
                (None, None) => anyhow::bail!("pass --spec FILE or --data ROOT"),
            };
            let out = imet::jobs::folds(&spec)
                .instrument(info_span!("job", kind = "folds", experiment = %spec.experiment))
                .await
                .with_context(|| format!("assigning folds for experiment `{}`", spec.experiment))?;
            print_json(&out)
        }
        Command::Sample { out, train, test, seed, classes, noise } => {
            let section = imet::data::sample::SampleSection { train, test, classes, seed, noise };
            let summary = imet::data::sample::generate_at(&out, &section)
                .instrument(info_span!("job", kind = "sample"))
                .await
                .with_context(|| format!("writing the synthetic sample to {out}"))?;
            print_json(&summary)
        }
        Command::Ensemble { spec, stage } => {
            let spec = spec.load()?;
            let s = imet::jobs::ensemble(&spec, stage.as_deref()).await.with_context(|| format!("ensemble of experiment `{}`", spec.experiment))?;
            print_json(&s)
        }
        Command::Level2 { spec, fold, stage } => {
            let spec = spec.load()?;
            let fold = imet::fold_job::parse_fold(&fold, spec.folds.k)?;
            let s = imet::jobs::level2(&spec, stage.as_deref(), fold)
                .await
                .with_context(|| format!("level-2 model of fold {} of experiment `{}`", fold.0, spec.experiment))?;
            print_json(&s)
        }
        Command::Shard { spec, split } => {
            let spec = spec.load()?;
            let split = match split {
                ShardSplit::Train => imet::storage::keys::Split::Train,
                ShardSplit::Test => imet::storage::keys::Split::Test,
            };
            let out = imet::jobs::shard(&spec, split)
                .await
                .with_context(|| format!("shard set of the {} images of experiment `{}`", imet::storage::keys::split_name(split), spec.experiment))?;
            print_json(&out)
        }
        Command::Curate { spec, stage } => {
            let spec = spec.load()?;
            let s = imet::jobs::curate(&spec, &stage)
                .await
                .with_context(|| format!("data edits of stage `{stage}` of experiment `{}`", spec.experiment))?;
            print_json(&s)
        }
        Command::Eval { pred, truth, labels, threshold } => {
            let v = imet::ensemble::eval(&pred, &truth, labels.as_deref(), threshold).await.with_context(|| format!("scoring {pred} against {truth}"))?;
            print_json(&v)
        }
        Command::Train(job) => {
            let (spec, fold) = job.resolve()?;
            let model = job.model;
            let stage = job.stage.as_deref();
            let out = imet::jobs::train(&spec, stage, &model, fold)
                .await
                .with_context(|| format!("training model `{model}` fold {} of experiment `{}`", fold.0, spec.experiment))?;
            print_json(&out)?;
            if spec.stage_model(stage, &model)?.train.predict_after {
                predict_fold(&spec, stage, &model, fold).await?;
            }
            Ok(())
        }
        Command::Predict(job) => {
            let (spec, fold) = job.resolve()?;
            predict_fold(&spec, job.stage.as_deref(), &job.model, fold).await
        }
        Command::Run { spec, parallel, gpus, smoke, log_dir, json, program, rerun_stale } => {
            let gpus = gpus.map(|g| imet::orchestrate::gpus::parse(&g)).transpose()?;
            let mut options = imet::orchestrate::local::RunOptions { parallel, log_dir, rerun_stale, gpus, ..imet::orchestrate::local::RunOptions::current_exe()? };
            if let Some(p) = program {
                options.program = p;
            }
            let summary = imet::orchestrate::local::run_path(&spec.source(), smoke, &options).await?;
            print_report(&summary, json, |s| s.render())?;
            Ok(summary.outcome()?)
        }
        Command::Gc { spec, delete, json } => {
            let spec = spec.load()?;
            let r = imet::orchestrate::gc::gc(&spec, delete).await.with_context(|| format!("collecting the garbage of experiment `{}`", spec.experiment))?;
            print_report(&r, json, |r| r.render())
        }
        Command::Status { spec, json } => {
            let spec = spec.load()?;
            let s = imet::orchestrate::status::status(&spec).await.with_context(|| format!("reading the status of experiment `{}`", spec.experiment))?;
            print_report(&s, json, |s| s.render())
        }
        Command::Budget { spec, package, budget, test_images, calibrate, calibration_batches, json } => {
            let spec = match (spec, package) {
                (_, Some(dir)) => imet::orchestrate::package::package_spec(&dir)?,
                (Some(spec), None) => spec.load()?,
                (None, None) => anyhow::bail!("pass --spec FILE or --package DIR"),
            };
            let r = imet::orchestrate::budget::estimate_spec(&spec, &budget, test_images, calibrate, calibration_batches)
                .await
                .with_context(|| format!("estimating the inference budget of experiment `{}`", spec.experiment))?;
            print_report(&r, json, |r| r.render())
        }
        Command::Plan { spec, json, budget, test_images } => plan(&spec, json, budget, test_images).await,
        Command::Package { spec, out, bundle, tar, force } => {
            let loaded = spec.load()?;
            let program = std::env::current_exe().context("locating this executable to copy into the package")?;
            let options = imet::orchestrate::package::PackageOptions { out, bundle, tar, force, program };
            let s = imet::orchestrate::package::package(&loaded, &options)
                .instrument(info_span!("job", kind = "package", experiment = %loaded.experiment))
                .await
                .with_context(|| format!("packaging experiment `{}` into {}", loaded.experiment, options.out.display()))?;
            print!("{}", s.render());
            Ok(())
        }
        Command::Infer { package, data, work, out, json } => {
            let options = imet::orchestrate::package::InferOptions { package, data, work, out };
            let s = imet::orchestrate::package::infer(&options)
                .instrument(info_span!("job", kind = "infer"))
                .await
                .with_context(|| format!("offline inference with the package {}", options.package.display()))?;
            print_report(&s, json, |s| s.render())
        }
        Command::Submit { spec, engine: SubmitEngine::Slurm, out, dry_run } => {
            let options = imet::orchestrate::slurm::SubmitOptions { out, dry_run };
            let s = imet::orchestrate::slurm::submit(&spec.source(), &options).await.with_context(|| format!("submitting {} to Slurm", spec.spec.display()))?;
            print!("{}", s.render());
            Ok(())
        }
        Command::Report { spec, json, out } => {
            let spec = spec.load()?;
            let r = imet::report::run(&spec, &imet::report::ReportOptions { out })
                .await
                .with_context(|| format!("reporting the learning curves of experiment `{}`", spec.experiment))?;
            print_report(&r, json, |r| r.render())
        }
        Command::Spec { spec } => {
            print!("{}", spec.load()?.to_toml());
            Ok(())
        }
        Command::Schema => {
            print!("{}", imet::spec::json_schema_text());
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "imet", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out: None } => Ok(man_page(Cli::command(), &mut std::io::stdout())?),
        Command::Man { out: Some(dir) } => {
            for path in write_man_pages(&dir).with_context(|| format!("writing man pages into {}", dir.display()))? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Render { spec, engine, out } => {
            let files = match engine {
                RenderEngine::K8s => imet::orchestrate::k8s::render(&spec.source(), &out),
                RenderEngine::AwsBatch => imet::orchestrate::batch::render(&spec.source(), &out),
            }
            .with_context(|| format!("rendering {} into {}", spec.spec.display(), out.display()))?;
            for f in &files {
                println!("{}  {}", f.path.display(), f.what);
            }
            Ok(())
        }
    }
}

/// `imet plan`: the DAG, and with `--budget` the inference budget table.
async fn plan(spec: &SpecArg, json: bool, budget: Option<String>, test_images: Option<usize>) -> anyhow::Result<()> {
    let plan = imet::orchestrate::show::plan_text(&spec.source(), json)?;
    let Some(budget) = budget else {
        print!("{plan}");
        return Ok(());
    };
    let loaded = spec.load()?;
    let r = imet::orchestrate::budget::estimate_spec(&loaded, &budget, test_images, false, 3)
        .await
        .with_context(|| format!("estimating the inference budget of experiment `{}`", loaded.experiment))?;
    if json {
        let plan: serde_json::Value = serde_json::from_str(&plan)?;
        print_json(&serde_json::json!({ "plan": plan, "budget": r }))
    } else {
        print!("{plan}\n{}", r.render());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of `cmd` and its subcommands without help text, as `path --arg`.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {}", arg.get_id()));
            }
            // Values of our own enums are documented; clap's (bool) and other crates' (shells, log formats) need not be.
            let values = arg.get_possible_values();
            let documented = values.iter().any(|v| v.get_help().is_some());
            for value in values.iter().filter(|_| documented) {
                if value.get_help().is_none() && !value.is_hide_set() {
                    out.push(format!("{path} {}={}", arg.get_id(), value.get_name()));
                }
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                out.push(format!("{path} {} (no about)", sub.get_name()));
            }
            undocumented(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_subcommand_option_and_value_has_help_text() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        undocumented(&cmd, "imet", &mut missing);
        assert!(missing.is_empty(), "add /// docs to: {missing:#?}");
    }
}
