//! Logging and progress. Text or JSON lines on stderr (`--log-format`,
//! `IMET_LOG_FORMAT`), filtered by `RUST_LOG` (default `info`). Long loops
//! report through [`Progress`]: a bar when stderr is a terminal, a log line
//! every few seconds otherwise (`IMET_PROGRESS_SECS`, default 10; batch
//! queues capture logs, not terminals), a JSON object under
//! `--log-format json`. Both show the rate, the running loss when the loop
//! has one, the loop's ETA and, inside a [`JobProgress`], the whole job's.

use indicatif::ProgressStyle;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn, Span};
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

/// The variable giving the seconds between progress log lines when stderr
/// is not a terminal (`0`: every update).
pub const PROGRESS_SECS_ENV: &str = "IMET_PROGRESS_SECS";

/// Seconds between progress log lines by default.
pub const DEFAULT_PROGRESS_SECS: f64 = 10.0;

/// How often a bar's rate, loss and ETAs are recomputed.
const BAR_REFRESH: Duration = Duration::from_millis(200);

static BARS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether progress shows as bars (text logs on a terminal).
fn bars() -> bool {
    *BARS.get().unwrap_or(&false)
}

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
            let bars: IndicatifLayer<_> = IndicatifLayer::new().with_span_child_prefix_symbol("").with_span_child_prefix_indent("");
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

/// Prints a line on stderr without tearing the progress bars.
pub fn print_line(line: &str) {
    if bars() {
        tracing_indicatif::suspend_tracing_indicatif(|| eprintln!("{line}"));
    } else {
        eprintln!("{line}");
    }
}

/// The interval between progress log lines: [`PROGRESS_SECS_ENV`], else
/// [`DEFAULT_PROGRESS_SECS`].
pub fn log_interval() -> Duration {
    let Ok(text) = std::env::var(PROGRESS_SECS_ENV) else {
        return Duration::from_secs_f64(DEFAULT_PROGRESS_SECS);
    };
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
        _ => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| warn!(value = %text, "{PROGRESS_SECS_ENV} is not a number of seconds >= 0; using {DEFAULT_PROGRESS_SECS}"));
            Duration::from_secs_f64(DEFAULT_PROGRESS_SECS)
        }
    }
}

/// A duration for people: `45s`, `4m12s`, `2h05m`.
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Seconds left at a steady rate: `done` of `total` units in `elapsed`.
fn eta(done: u64, total: u64, elapsed: f64) -> Option<f64> {
    (done > 0 && total >= done).then(|| (total - done) as f64 * elapsed / done as f64)
}

/// The units of a whole job (every epoch's training and validation
/// images, every view's predictions), shared by the loops inside it.
struct JobState {
    label: String,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
}

impl JobState {
    fn eta(&self) -> Option<f64> {
        eta(self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed), self.started.elapsed().as_secs_f64())
    }
}

/// The job the process is running, if it declared one.
static JOB: Mutex<Option<Arc<JobState>>> = Mutex::new(None);

/// The job-wide part of progress: declares how many units the whole job
/// has, so every [`Progress`] started while it lives also shows the job's
/// ETA and advances it. One per process at a time (a process runs one
/// job); it ends when dropped.
pub struct JobProgress {
    state: Arc<JobState>,
}

impl JobProgress {
    /// Starts the job `label` of `total` units.
    pub fn start(label: impl Into<String>, total: u64) -> JobProgress {
        let state = Arc::new(JobState { label: label.into(), total: AtomicU64::new(total), done: AtomicU64::new(0), started: Instant::now() });
        if let Ok(mut job) = JOB.lock() {
            *job = Some(state.clone());
        }
        JobProgress { state }
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.state.done.load(Ordering::Relaxed)
    }

    /// The job's ETA in seconds, once it has a rate.
    pub fn eta_seconds(&self) -> Option<f64> {
        self.state.eta()
    }
}

impl Drop for JobProgress {
    fn drop(&mut self) {
        if let Ok(mut job) = JOB.lock() {
            if job.as_ref().is_some_and(|j| Arc::ptr_eq(j, &self.state)) {
                *job = None;
            }
        }
    }
}

/// What a progress line or bar shows, recomputed at most every
/// [`BAR_REFRESH`] on a bar and every log interval otherwise.
struct Shown {
    last: Instant,
    loss_sum: f64,
    loss_n: u64,
}

/// Progress of a long loop (batches trained, images predicted, member
/// files read, jobs run).
pub struct Progress {
    span: Span,
    what: String,
    unit: &'static str,
    total: u64,
    done: AtomicU64,
    started: Instant,
    shown: Mutex<Shown>,
    every: Duration,
    bars: bool,
    job: Option<Arc<JobState>>,
}

impl Progress {
    /// Starts reporting `total` units of `what`.
    pub fn new(what: impl Into<String>, total: u64) -> Progress {
        Progress::with_unit(what, total, "items")
    }

    /// Starts reporting `total` `unit`s (`images`, `files`, `jobs`) of `what`.
    pub fn with_unit(what: impl Into<String>, total: u64, unit: &'static str) -> Progress {
        let what = what.into();
        let bars = bars();
        let span = tracing::info_span!("progress", what = %what, "indicatif.pb_show" = tracing::field::Empty);
        if bars {
            span.record("indicatif.pb_show", true);
            let template = format!("{} [{{bar:24}}] {{pos}}/{{len}} {{msg}}", what.replace('{', "{{").replace('}', "}}"));
            if let Ok(style) = ProgressStyle::with_template(&template) {
                span.pb_set_style(&style.progress_chars("=> "));
            }
            span.pb_set_length(total);
            span.pb_start();
        }
        let job = JOB.lock().ok().and_then(|j| j.clone());
        Progress {
            span,
            what,
            unit,
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            shown: Mutex::new(Shown { last: Instant::now(), loss_sum: 0.0, loss_n: 0 }),
            every: if bars { BAR_REFRESH } else { log_interval() },
            bars,
            job,
        }
    }

    /// Adds `n` finished units.
    pub fn inc(&self, n: u64) {
        self.advance(n, None);
    }

    /// Adds `n` finished units whose mean loss is `loss` (the running mean
    /// over the loop is shown).
    pub fn inc_loss(&self, n: u64, loss: f64) {
        self.advance(n, Some(loss));
    }

    fn advance(&self, n: u64, loss: Option<f64>) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(job) = &self.job {
            job.done.fetch_add(n, Ordering::Relaxed);
        }
        if self.bars {
            self.span.pb_inc(n);
        }
        let Ok(mut shown) = self.shown.lock() else { return };
        if let Some(l) = loss.filter(|l| l.is_finite()) {
            shown.loss_sum += l * n as f64;
            shown.loss_n += n;
        }
        // A bar also shows the loop's last update; a log line waits its turn.
        let due = shown.last.elapsed() >= self.every || (self.bars && done >= self.total);
        if !due {
            return;
        }
        shown.last = Instant::now();
        let loss = (shown.loss_n > 0).then(|| shown.loss_sum / shown.loss_n as f64);
        drop(shown);
        self.show(done, loss);
    }

    /// Draws the bar's message, or logs a progress line.
    fn show(&self, done: u64, loss: Option<f64>) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let per_sec = done as f64 / elapsed.max(1e-9);
        let eta_s = eta(done, self.total, elapsed);
        let job_eta_s = self.job.as_ref().and_then(|j| j.eta());
        if self.bars {
            let mut msg = format!("{per_sec:.1} {}/s", self.unit);
            if let Some(l) = loss {
                msg += &format!("  loss {l:.4}");
            }
            msg += &format!("  ETA {}", eta_s.map_or("?".into(), human_duration));
            if let Some(job) = &self.job {
                msg += &format!("  {} ETA {}", job.label, job_eta_s.map_or("?".into(), human_duration));
            }
            self.span.pb_set_message(&msg);
            return;
        }
        let round = |v: f64| (v * 10.0).round() / 10.0;
        let job_done = self.job.as_ref().map(|j| j.done.load(Ordering::Relaxed));
        let job_total = self.job.as_ref().map(|j| j.total.load(Ordering::Relaxed));
        info!(
            what = %self.what,
            unit = self.unit,
            done,
            total = self.total,
            per_sec = round(per_sec),
            loss = loss.map(|l| (l * 1e4).round() / 1e4),
            eta_s = eta_s.map(round),
            eta = %eta_s.map_or("?".into(), human_duration),
            job = self.job.as_ref().map(|j| j.label.as_str()),
            job_done,
            job_total,
            job_eta_s = job_eta_s.map(round),
            "progress"
        );
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(human_duration(44.6), "45s");
        assert_eq!(human_duration(252.0), "4m12s");
        assert_eq!(human_duration(7500.0), "2h05m");
        assert_eq!(human_duration(f64::NAN), "?");
    }

    #[test]
    fn the_eta_is_the_rest_at_the_rate_so_far() {
        assert_eq!(eta(0, 10, 5.0), None);
        assert_eq!(eta(5, 10, 5.0), Some(5.0));
        assert_eq!(eta(10, 10, 5.0), Some(0.0));
    }

    #[test]
    fn loops_advance_the_job_they_run_in_and_the_job_ends_when_dropped() {
        let job = JobProgress::start("train m fold 0", 100);
        let p = Progress::with_unit("epoch 1/2", 50, "images");
        p.inc_loss(20, 0.5);
        p.inc(5);
        assert_eq!((p.done(), job.done()), (25, 25));
        drop(job);
        assert!(JOB.lock().unwrap().is_none());
        let q = Progress::new("after", 3);
        q.inc(3);
        assert!(q.job.is_none());
    }
}
