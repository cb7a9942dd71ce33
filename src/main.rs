//! The `imet` command line: parses arguments, starts logging, calls one
//! library function per subcommand.

use anyhow::Context;
use clap::{Parser, Subcommand};
use imet::telemetry::{self, LogFormat};
use imet::JobSpec;
use std::path::PathBuf;
use tracing::{info_span, Instrument};

#[derive(Parser)]
#[command(name = "imet", version, about = "Train, predict and ensemble iMet Collection 2019 classifiers as jobs over an object store")]
struct Cli {
    /// Log line format (also IMET_LOG_FORMAT); filter with RUST_LOG.
    #[arg(long, global = true, env = "IMET_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
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
    /// Blend every member's predictions, fit thresholds on OOF F2, write the submission.
    Ensemble {
        #[arg(long)]
        spec: PathBuf,
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
    /// Run an experiment's whole pipeline on this machine, resuming where it stopped.
    Run {
        #[arg(long)]
        spec: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Info => {
            let info = imet::device_info();
            println!("imet {}", env!("CARGO_PKG_VERSION"));
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        Command::Validate { data } => {
            let url = imet::spec::root_to_url(&data)?;
            let store = imet::storage::Store::open(&url)?;
            let inputs = imet::data::load_inputs(&store)
                .instrument(info_span!("job", kind = "validate"))
                .await
                .with_context(|| format!("validating the inputs under {url}"))?;
            println!(
                "ok: {} classes, {} training images, {} test images",
                inputs.vocab.len(),
                inputs.train.len(),
                inputs.test.ids.len()
            );
        }
        Command::Ensemble { spec } => {
            let spec = JobSpec::load(&spec)?;
            let s = imet::ensemble::run(&spec).await.with_context(|| format!("ensemble of experiment `{}`", spec.experiment))?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Command::Eval { pred, truth, labels, threshold } => {
            let v = imet::ensemble::eval(&pred, &truth, labels.as_deref(), threshold)
                .await
                .with_context(|| format!("scoring {pred} against {truth}"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Run { spec } => {
            let spec = JobSpec::load(&spec)?;
            let summary = imet::orchestrate::local::run(&spec)
                .await
                .with_context(|| format!("running experiment `{}`", spec.experiment))?;
            println!("{:<12} {:<8} {:>8}  output", "stage", "state", "seconds");
            for s in &summary.stages {
                println!("{:<12} {:<8} {:>8.1}  {}", s.stage, s.state, s.seconds, s.output);
            }
        }
    }
    Ok(())
}
