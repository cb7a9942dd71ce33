//! Job leases: at most one live runner works on a job at a time, however
//! many `imet run` processes, batch-queue retries or hand-started jobs share
//! a store.
//!
//! A lease is a numbered series of small JSON objects named by the job's
//! manifest, `leases/{manifest}/{generation:010}.json` (apart from the
//! job's outputs, so listing them never shows a lease). A runner takes the
//! lease by creating the next generation with a conditional create (the
//! same primitive as the manifest commit: `If-None-Match: *` on S3, a hard
//! link on a local folder), so of two runners that find a generation dead
//! (or none at all) exactly one creates the next. The holder rewrites its
//! own generation every `heartbeat_s` (a whole-object put) and stops
//! touching the job's outputs as soon as a later generation exists.
//!
//! A generation is dead, and the job may be taken over, when:
//! - its holder marked it released (the job failed and said so);
//! - its holder ran on this machine (same host name, boot and process
//!   namespace) and that process is gone;
//! - a waiter has watched it stay unchanged (no heartbeat) for `ttl_s` by
//!   its own monotonic clock, which needs no agreement between clocks;
//! - its recorded expiry passed more than `ttl_s` ago by the waiter's clock
//!   (a holder that died long before the waiter came: no need to watch it
//!   for a whole `ttl_s`; clocks may disagree by up to `ttl_s`).
//!
//! The holder deletes every generation once the job's manifest is committed;
//! waiters check the manifest first, so they then skip the job.

use super::keys;
use super::manifest::JobId;
use super::store::Store;
use crate::error::{Error, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How jobs lease their work (`[storage.lease]`; not part of any job's
/// identity).
///
/// ```toml
/// [storage.lease]
/// ttl_s = 120        # a lease without a heartbeat for this long is dead
/// heartbeat_s = 20   # how often the holder renews it
/// poll_ms = 2000     # how often a waiting job looks again
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeasePolicy {
    /// Seconds without a heartbeat after which a lease is dead and its job
    /// is taken over.
    #[serde(default = "defaults::ttl_s")]
    pub ttl_s: u64,
    /// Seconds between the holder's renewals; well under `ttl_s`.
    #[serde(default = "defaults::heartbeat_s")]
    pub heartbeat_s: u64,
    /// Milliseconds between a waiting job's looks at the lease and the
    /// manifest.
    #[serde(default = "defaults::poll_ms")]
    pub poll_ms: u64,
}

mod defaults {
    pub fn ttl_s() -> u64 {
        120
    }
    pub fn heartbeat_s() -> u64 {
        20
    }
    pub fn poll_ms() -> u64 {
        2000
    }
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy { ttl_s: defaults::ttl_s(), heartbeat_s: defaults::heartbeat_s(), poll_ms: defaults::poll_ms() }
    }
}

impl LeasePolicy {
    /// Range checks; messages name the field as `storage.lease.field`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.ttl_s == 0 || self.ttl_s > 86_400 {
            return Err(format!("`storage.lease.ttl_s` = {}: must be between 1 and 86400 seconds", self.ttl_s));
        }
        if self.heartbeat_s == 0 || self.heartbeat_s * 2 > self.ttl_s {
            return Err(format!(
                "`storage.lease.heartbeat_s` = {}: must be at least 1 and at most half of `storage.lease.ttl_s` ({}), or a slow renewal lets another runner take a live job",
                self.heartbeat_s, self.ttl_s
            ));
        }
        if self.poll_ms == 0 || self.poll_ms > 600_000 {
            return Err(format!("`storage.lease.poll_ms` = {}: must be between 1 and 600000", self.poll_ms));
        }
        Ok(())
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s)
    }
}

/// Who holds a lease: enough to tell, on the same machine, whether the
/// holder still runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    /// `/proc/sys/kernel/random/boot_id` (empty off Linux).
    #[serde(default)]
    pub boot_id: String,
    /// The process's PID namespace (`/proc/self/ns/pid`), so two containers
    /// with one host name do not judge each other's process ids.
    #[serde(default)]
    pub pid_ns: String,
    /// The process's start time in clock ticks since boot, so a reused
    /// process id is not taken for the holder.
    #[serde(default)]
    pub started: u64,
}

impl Owner {
    /// This process.
    pub fn this() -> &'static Owner {
        static THIS: OnceLock<Owner> = OnceLock::new();
        THIS.get_or_init(|| {
            let pid = std::process::id();
            Owner {
                host: host_name(),
                pid,
                boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default(),
                pid_ns: std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default(),
                started: process_start(pid).unwrap_or(0),
            }
        })
    }

    /// `Some(true)` when the holder ran on this machine and is gone,
    /// `Some(false)` when it runs here, `None` when it ran elsewhere (or
    /// this machine cannot tell).
    pub fn gone_here(&self) -> Option<bool> {
        let me = Owner::this();
        if self.host != me.host || self.boot_id.is_empty() || self.boot_id != me.boot_id || self.pid_ns != me.pid_ns {
            return None;
        }
        if self.pid == me.pid && self.started == me.started {
            return Some(false);
        }
        Some(process_start(self.pid) != Some(self.started))
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pid {}", self.host, self.pid)
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Field 22 of `/proc/{pid}/stat` (start time in ticks); `None` when the
/// process does not exist (or off Linux).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// One generation of a job's lease, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// The job, as `imet status` names it.
    pub job: String,
    pub generation: u64,
    pub owner: Owner,
    /// Random per take: tells the holder's record from a rewrite by another.
    pub token: String,
    /// RFC 3339 times by the holder's clock.
    pub acquired_at: String,
    pub renewed_at: String,
    pub expires_at: String,
    /// Renewals so far.
    pub beats: u64,
    /// The holder gave the job up (it failed): take it at once.
    #[serde(default)]
    pub released: bool,
}

impl LeaseRecord {
    fn parse(key: &str, bytes: &[u8]) -> Result<LeaseRecord> {
        serde_json::from_slice(bytes).map_err(|e| Error::Format { key: key.to_string(), what: "job lease", reason: format!("{e}; delete it (`imet gc --delete` removes dead leases)") })
    }

    fn renewed(&self, ttl: Duration) -> LeaseRecord {
        let now = chrono::Utc::now();
        LeaseRecord {
            renewed_at: stamp(now),
            expires_at: stamp(now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)),
            beats: self.beats + 1,
            ..self.clone()
        }
    }

    /// Whether the recorded expiry passed more than `ttl` ago by this clock.
    fn long_expired(&self, ttl: Duration) -> bool {
        let Ok(expires) = chrono::DateTime::parse_from_rfc3339(&self.expires_at) else { return true };
        let margin = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        chrono::Utc::now() > expires.with_timezone(&chrono::Utc) + margin
    }
}

fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The generations of the lease of `manifest`, ascending, with their keys.
///
/// # Errors
/// Store errors.
pub async fn generations(store: &Store, manifest: &str) -> Result<Vec<(u64, String)>> {
    let dir = keys::lease_dir(manifest);
    let mut out: Vec<(u64, String)> = store
        .list(&format!("{dir}/"))
        .await?
        .into_iter()
        .filter_map(|o| Some((o.key.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()?, o.key)))
        .collect();
    out.sort();
    Ok(out)
}

/// Reads one lease generation; `None` when it is gone.
///
/// # Errors
/// Store errors; [`Error::Format`] naming the key for a damaged record.
pub async fn read(store: &Store, key: &str) -> Result<Option<LeaseRecord>> {
    match store.get_opt(key).await? {
        Some(b) => LeaseRecord::parse(key, &b).map(Some),
        None => Ok(None),
    }
}

/// Whether the newest generation of a lease is dead by what this process
/// can tell at once (released, a gone holder on this machine, a long-passed
/// expiry); a waiter also watches it for `ttl_s` (see the module docs).
pub fn dead_now(record: &LeaseRecord, policy: &LeasePolicy) -> bool {
    record.released || record.owner.gone_here() == Some(true) || record.long_expired(policy.ttl())
}

/// A held lease: renewed in the background until [`Lease::finish`].
#[derive(Clone)]
pub struct Lease {
    inner: Arc<Held>,
}

struct Held {
    store: Store,
    manifest: String,
    key: String,
    policy: LeasePolicy,
    record: Mutex<LeaseRecord>,
    /// Set when a later generation exists or the holder's record changed
    /// hands: the job must stop writing.
    lost: AtomicBool,
    /// Milliseconds since `origin` of the last confirmed renewal.
    confirmed_ms: AtomicU64,
    origin: Instant,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

tokio::task_local! {
    static CURRENT: Lease;
}

/// What [`acquire`] found.
pub enum Taken {
    /// This process holds the job's lease.
    Held(Lease),
    /// The job got committed while this process waited.
    Committed,
}

/// Takes the lease of the job whose manifest is `manifest`, waiting while a
/// live runner holds it; `committed` says whether the job is committed
/// (looked at before every wait).
///
/// # Errors
/// Store errors; [`Error::Format`] for a damaged lease record.
pub async fn acquire<F, Fut>(store: &Store, job: &JobId, manifest: &str, mut committed: F) -> Result<Taken>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let policy = store.lease_policy().clone();
    // What this waiter saw of the newest generation, and since when.
    let mut watched: Option<(u64, u64, Instant)> = None;
    let mut said_waiting = false;
    loop {
        let gens = generations(store, manifest).await?;
        let next = match gens.last() {
            None => 0,
            Some((g, key)) => match read(store, key).await {
                // Deleted between the listing and the read: look again.
                Ok(None) => continue,
                // A damaged record (a torn write on a store without atomic
                // puts, an edit by hand): nobody can be holding it.
                Err(e @ Error::Format { .. }) => {
                    warn!(key = %key, error = %e, "a damaged lease record; taking the job over");
                    g + 1
                }
                Err(e) => return Err(e),
                Ok(Some(rec)) => {
                    let seen = (rec.generation, rec.beats);
                    let since = match watched {
                        Some((g0, b0, t)) if (g0, b0) == seen => t,
                        _ => {
                            let now = Instant::now();
                            watched = Some((seen.0, seen.1, now));
                            now
                        }
                    };
                    if dead_now(&rec, &policy) || since.elapsed() >= policy.ttl() {
                        let why = if rec.released { "released" } else { "dead" };
                        info!(key = %key, holder = %rec.owner, why, "the job's lease is {why}; taking the job over");
                        g + 1
                    } else {
                        if !said_waiting {
                            info!(job = %job, key = %key, holder = %rec.owner, "job leased by another runner; waiting for it to commit or its lease to expire");
                            said_waiting = true;
                        }
                        tokio::time::sleep(Duration::from_millis(policy.poll_ms)).await;
                        if committed().await? {
                            return Ok(Taken::Committed);
                        }
                        continue;
                    }
                }
            },
        };
        let now = chrono::Utc::now();
        let token = hex::encode(rand::rng().random::<[u8; 16]>());
        let record = LeaseRecord {
            job: job.to_string(),
            generation: next,
            owner: Owner::this().clone(),
            token,
            acquired_at: stamp(now),
            renewed_at: stamp(now),
            expires_at: stamp(now + chrono::Duration::from_std(policy.ttl()).unwrap_or(chrono::Duration::MAX)),
            beats: 0,
            released: false,
        };
        let key = keys::lease(manifest, next);
        if !store.put_if_absent(&key, serde_json::to_vec_pretty(&record)?).await? {
            // Another runner took this generation first (or our own create
            // was answered late: the read-back tells).
            match read(store, &key).await? {
                Some(r) if r.token == record.token => {}
                _ => continue,
            }
        }
        // A store whose conditional create is not atomic (check, then
        // write) can let two creates pass: the one whose record stays wins.
        match read(store, &key).await? {
            Some(r) if r.token == record.token => {}
            _ => continue,
        }
        if said_waiting || next > 0 {
            info!(job = %job, key = %key, generation = next, "took the job's lease");
        }
        return Ok(Taken::Held(Lease::start(store.clone(), manifest.to_string(), key, policy, record)));
    }
}

impl Lease {
    fn start(store: Store, manifest: String, key: String, policy: LeasePolicy, record: LeaseRecord) -> Lease {
        let lease = Lease {
            inner: Arc::new(Held {
                store,
                manifest,
                key,
                policy,
                record: Mutex::new(record),
                lost: AtomicBool::new(false),
                confirmed_ms: AtomicU64::new(0),
                origin: Instant::now(),
                heartbeat: Mutex::new(None),
            }),
        };
        let beat = lease.clone();
        let task = tokio::spawn(async move {
            let every = Duration::from_secs(beat.inner.policy.heartbeat_s);
            loop {
                tokio::time::sleep(every).await;
                match beat.renew().await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        let since = beat.unconfirmed_for();
                        warn!(key = %beat.inner.key, error = %e, unconfirmed_s = since.as_secs(), "could not renew the job's lease");
                        if since >= beat.inner.policy.ttl() {
                            beat.mark_lost("it could not be renewed for a whole ttl_s");
                            break;
                        }
                    }
                }
            }
        });
        *lease.inner.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        lease
    }

    /// The key of the held generation.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The lease held by the job running in this task, if any (set by
    /// [`Lease::scope`]).
    pub fn current() -> Option<Lease> {
        CURRENT.try_with(|l| l.clone()).ok()
    }

    /// Runs `fut` with this lease as [`Lease::current`].
    pub async fn scope<F: std::future::Future>(&self, fut: F) -> F::Output {
        CURRENT.scope(self.clone(), fut).await
    }

    fn unconfirmed_for(&self) -> Duration {
        let now = self.inner.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.inner.confirmed_ms.load(Ordering::Relaxed)))
    }

    fn mark_lost(&self, why: &str) {
        if !self.inner.lost.swap(true, Ordering::SeqCst) {
            warn!(key = %self.inner.key, why, "lost the job's lease: another runner may work on it; this run stops writing");
        }
    }

    /// Whether this generation is still the newest and ours.
    async fn verify(&self) -> Result<bool> {
        let held = &self.inner;
        let mine = held.record.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let gens = generations(&held.store, &held.manifest).await?;
        if gens.last().is_some_and(|(g, _)| *g > mine.generation) {
            self.mark_lost("a later generation of the lease exists");
            return Ok(false);
        }
        match read(&held.store, &held.key).await? {
            Some(r) if r.token == mine.token => Ok(true),
            _ => {
                self.mark_lost("its record was replaced or removed");
                Ok(false)
            }
        }
    }

    /// One heartbeat: verify, then rewrite the record. `false` when lost.
    async fn renew(&self) -> Result<bool> {
        if self.inner.lost.load(Ordering::SeqCst) || !self.verify().await? {
            return Ok(false);
        }
        let next = self.inner.record.lock().unwrap_or_else(|p| p.into_inner()).renewed(self.inner.policy.ttl());
        self.inner.store.put(&self.inner.key, serde_json::to_vec_pretty(&next)?).await?;
        *self.inner.record.lock().unwrap_or_else(|p| p.into_inner()) = next;
        self.inner.confirmed_ms.store(self.inner.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// `Ok` while this process still holds the lease: call before writing
    /// or deleting what other runners of the job could use. Asks the store
    /// again when the last renewal is older than one heartbeat (a process
    /// paused for a while must not trust an old answer).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] naming the lease key; store errors.
    pub async fn ensure_held(&self) -> Result<()> {
        let stale = self.unconfirmed_for() > Duration::from_secs(self.inner.policy.heartbeat_s);
        if !self.inner.lost.load(Ordering::SeqCst) && (!stale || self.verify().await?) {
            return Ok(());
        }
        Err(Error::LeaseLost { key: self.inner.key.clone() })
    }

    async fn stop_heartbeat(&self) {
        let task = self.inner.heartbeat.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Ends the lease after the job's manifest is committed: every
    /// generation is deleted (waiters find the manifest).
    ///
    /// # Errors
    /// Store errors (the job stays committed; leftovers are removed by
    /// `imet gc --delete`).
    pub async fn finish_committed(&self) -> Result<()> {
        self.stop_heartbeat().await;
        for (_, key) in generations(&self.inner.store, &self.inner.manifest).await? {
            self.inner.store.delete(&key).await?;
        }
        Ok(())
    }

    /// Ends the lease of a job that was not committed: the record is
    /// marked released so a waiting runner takes the job at once. Best
    /// effort: a failure only logs (the lease then expires).
    pub async fn release(&self) {
        self.stop_heartbeat().await;
        if self.inner.lost.load(Ordering::SeqCst) {
            return;
        }
        let mut rec = self.inner.record.lock().unwrap_or_else(|p| p.into_inner()).clone();
        rec.released = true;
        let body = match serde_json::to_vec_pretty(&rec) {
            Ok(b) => b,
            Err(_) => return,
        };
        if let Err(e) = self.inner.store.put(&self.inner.key, body).await {
            warn!(key = %self.inner.key, error = %e, "could not release the job's lease; it expires after storage.lease.ttl_s");
        }
    }

    /// Whether the lease was lost.
    pub fn lost(&self) -> bool {
        self.inner.lost.load(Ordering::SeqCst)
    }

    /// A guard that stops the heartbeat when dropped: a job whose future is
    /// dropped half-way (an interrupt) leaves its lease to expire instead of
    /// renewing it for as long as the process lives.
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop(self.clone())
    }
}

/// See [`Lease::stop_on_drop`].
pub struct StopOnDrop(Lease);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.inner.heartbeat.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId { kind: "train".into(), experiment: "e".into(), model: Some("m".into()), fold: Some(0) }
    }

    fn store(policy: LeasePolicy) -> Store {
        Store::memory().with_lease_policy(policy)
    }

    fn fast() -> LeasePolicy {
        LeasePolicy { ttl_s: 2, heartbeat_s: 1, poll_ms: 50 }
    }

    fn never() -> impl FnMut() -> std::future::Ready<Result<bool>> {
        || std::future::ready(Ok(false))
    }

    async fn held(store: &Store) -> Lease {
        match acquire(store, &job(), "j/_SUCCESS.json", never()).await.unwrap() {
            Taken::Held(l) => l,
            Taken::Committed => panic!("nothing commits here"),
        }
    }

    #[tokio::test]
    async fn a_second_taker_waits_for_a_live_lease_and_takes_it_when_released() {
        let store = store(fast());
        let first = held(&store).await;
        assert_eq!(first.key(), "leases/j/_SUCCESS.json/0000000000.json");
        let s2 = store.clone();
        let second = tokio::spawn(async move { held(&s2).await });
        // Renewed by its heartbeat, the first lease outlives its ttl.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert!(!second.is_finished(), "a live lease is not taken");
        first.ensure_held().await.unwrap();
        first.release().await;
        let second = tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
        assert_eq!(second.key(), "leases/j/_SUCCESS.json/0000000001.json");
        second.finish_committed().await.unwrap();
        assert!(generations(&store, "j/_SUCCESS.json").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_waiter_skips_a_job_committed_meanwhile() {
        let store = store(fast());
        let _first = held(&store).await;
        let mut looks = 0;
        let taken = acquire(&store, &job(), "j/_SUCCESS.json", || {
            looks += 1;
            std::future::ready(Ok(looks >= 2))
        })
        .await
        .unwrap();
        assert!(matches!(taken, Taken::Committed));
    }

    #[tokio::test]
    async fn a_lease_without_heartbeats_is_taken_over_after_its_ttl_and_its_holder_learns_it() {
        let store = store(fast());
        let first = held(&store).await;
        // The holder stalls: no heartbeat.
        first.stop_heartbeat().await;
        let t = Instant::now();
        let second = held(&store).await;
        assert!(t.elapsed() >= Duration::from_secs(2), "taken after ttl_s: {:?}", t.elapsed());
        assert_eq!(second.key(), "leases/j/_SUCCESS.json/0000000001.json");
        // The stalled holder asks the store before writing, and stops.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let err = first.ensure_held().await.unwrap_err();
        assert!(matches!(&err, Error::LeaseLost { key } if key.ends_with("0000000000.json")), "{err}");
        second.ensure_held().await.unwrap();
    }

    #[tokio::test]
    async fn a_gone_holder_on_this_machine_or_a_long_expired_lease_is_taken_at_once() {
        let store = store(LeasePolicy { ttl_s: 600, heartbeat_s: 60, poll_ms: 50 });
        let me = Owner::this().clone();
        let mut rec = LeaseRecord {
            job: "train e".into(),
            generation: 4,
            owner: Owner { started: me.started + 1, ..me.clone() },
            token: "t".into(),
            acquired_at: stamp(chrono::Utc::now()),
            renewed_at: stamp(chrono::Utc::now()),
            expires_at: stamp(chrono::Utc::now() + chrono::Duration::seconds(600)),
            beats: 0,
            released: false,
        };
        if me.boot_id.is_empty() {
            return; // not Linux: process identity unknown
        }
        store.put(&keys::lease("j/_SUCCESS.json", 4), serde_json::to_vec(&rec).unwrap()).await.unwrap();
        let t = Instant::now();
        let l = held(&store).await;
        assert!(t.elapsed() < Duration::from_secs(5) && l.key().ends_with("0000000005.json"), "{}", l.key());
        l.finish_committed().await.unwrap();
        // A holder elsewhere whose expiry passed long ago.
        rec.owner.host = "elsewhere".into();
        rec.expires_at = stamp(chrono::Utc::now() - chrono::Duration::seconds(1_300));
        store.put(&keys::lease("j/_SUCCESS.json", 9), serde_json::to_vec(&rec).unwrap()).await.unwrap();
        let l = held(&store).await;
        assert!(l.key().ends_with("0000000010.json"), "{}", l.key());
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not_taken_for_it() {
        let me = Owner::this().clone();
        if me.boot_id.is_empty() {
            return;
        }
        assert_eq!(me.gone_here(), Some(false));
        assert_eq!(Owner { started: me.started + 7, ..me.clone() }.gone_here(), Some(true));
        assert_eq!(Owner { host: "elsewhere".into(), ..me }.gone_here(), None);
    }

    #[test]
    fn a_heartbeat_slower_than_half_the_ttl_is_refused_by_name() {
        let err = LeasePolicy { ttl_s: 10, heartbeat_s: 6, poll_ms: 100 }.validate().unwrap_err();
        assert!(err.contains("storage.lease.heartbeat_s"), "{err}");
        assert!(LeasePolicy::default().validate().is_ok());
    }
}
