//! Logging and progress. Text or JSON lines on stderr (`--log-format`,
//! `IMET_LOG_FORMAT`), filtered by `RUST_LOG` (default `info`). Long loops
//! report through [`Progress`]: a bar when stderr is a terminal, a log line
//! every few seconds otherwise (batch queues capture logs, not terminals).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, Span};
use tracing_indicatif::filter::IndicatifFilter;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static BARS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let tty = std::io::stderr().is_terminal();
    match format {
        LogFormat::Json => {
            let _ = BARS.set(false);
            let _ = tracing_subscriber::registry()
                .with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(true).with_writer(std::io::stderr).with_filter(filter()))
                .try_init();
        }
        LogFormat::Text if tty => {
            let _ = BARS.set(true);
            let bars: IndicatifLayer<_> = IndicatifLayer::new();
            let _ = tracing_subscriber::registry()
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(bars.get_stderr_writer())
                        .with_target(false)
                        .fmt_fields(tracing_indicatif::filter::hide_indicatif_span_fields(
                            tracing_subscriber::fmt::format::DefaultFields::new(),
                        ))
                        .with_filter(filter()),
                )
                .with(bars.with_filter(IndicatifFilter::new(false)))
                .try_init();
        }
        LogFormat::Text => {
            let _ = BARS.set(false);
            let _ = tracing_subscriber::registry()
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(false).with_filter(filter()))
                .try_init();
        }
    }
}

/// Progress of a long loop (images decoded, batches trained, thresholds fitted).
pub struct Progress {
    span: Span,
    what: &'static str,
    total: u64,
    done: AtomicU64,
    started: Instant,
    last_log: Mutex<Instant>,
    every: Duration,
}

impl Progress {
    /// Starts reporting `total` units of `what`.
    pub fn new(what: &'static str, total: u64) -> Progress {
        let span = tracing::info_span!("progress", what, "indicatif.pb_show" = tracing::field::Empty);
        if *BARS.get().unwrap_or(&false) {
            span.record("indicatif.pb_show", true);
            span.pb_set_length(total);
            span.pb_set_message(what);
            span.pb_start();
        }
        Progress {
            span,
            what,
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
            every: Duration::from_secs(10),
        }
    }

    /// Adds `n` finished units.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if *BARS.get().unwrap_or(&false) {
            self.span.pb_inc(n);
            return;
        }
        let mut last = self.last_log.lock().expect("progress lock is never poisoned by a panic while held");
        if last.elapsed() >= self.every {
            *last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            info!(what = self.what, done, total = self.total, per_sec = done as f64 / secs.max(1e-9), "progress");
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}
