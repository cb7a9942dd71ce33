//! `imet plan`: shows an experiment's job DAG (every job, what it waits
//! for, its command line and resources) as a table or as JSON. Reads the
//! spec only; writes nothing.

use super::plan::{Job, Plan};
use crate::error::Result;
use crate::spec::SpecSource;
use std::fmt::Write as _;

/// The plan of the spec `source` names (its file and `--set` overrides,
/// which every command line passes on), rendered as a table, or as JSON
/// when `json` is set (the [`Plan`] serialised, plus the `imet` binary the
/// commands call).
///
/// # Errors
/// The spec's load and validation errors.
pub fn plan_text(source: &SpecSource, json: bool) -> Result<String> {
    let spec = source.load()?;
    let plan = Plan::from_source(&spec, source)?;
    let program = spec.cluster.imet();
    if json {
        let mut v = serde_json::to_value(&plan)?;
        if let Some(jobs) = v.get_mut("jobs").and_then(|j| j.as_array_mut()) {
            for (value, job) in jobs.iter_mut().zip(&plan.jobs) {
                value["command"] = serde_json::Value::String(job.command_line(program));
            }
        }
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    Ok(table(&plan, program))
}

/// One line per job: id, dependencies (folds compressed to ranges),
/// resources and the command line.
pub fn table(plan: &Plan, program: &str) -> String {
    let rows: Vec<[String; 7]> = plan
        .jobs
        .iter()
        .map(|j| {
            [
                j.id.clone(),
                deps_summary(&j.deps),
                j.resources.gpus.to_string(),
                j.resources.cpus.to_string(),
                format!("{}G", j.resources.memory_gb),
                duration(j.resources.time_limit_s),
                j.command_line(program),
            ]
        })
        .collect();
    let header = ["job", "depends on", "gpus", "cpus", "mem", "time", "command"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = format!("experiment `{}`: {} jobs\n", plan.experiment, plan.jobs.len());
    let line = |out: &mut String, cells: [&str; 7]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}  {:>w5$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4],
            w5 = width[5],
        );
    };
    line(&mut out, header);
    let stages = plan.stages();
    let several = stages.len() > 1;
    let mut current: Option<&str> = None;
    for (j, r) in plan.jobs.iter().zip(&rows) {
        let stage = j.stage.as_deref().unwrap_or(crate::ids::MAIN_STAGE);
        if several && j.kind != super::plan::JobKind::Folds && current != Some(stage) {
            let n = stages.iter().find(|(s, _)| s == stage).map_or(0, |(_, ids)| ids.len());
            let _ = writeln!(out, "-- stage {stage} ({n} jobs)");
            current = Some(stage);
        }
        line(&mut out, [&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]]);
    }
    let gpu_hours: f64 = plan.jobs.iter().map(|j: &Job| j.resources.gpus as f64 * j.resources.time_limit_s as f64 / 3600.0).sum();
    let _ = writeln!(out, "at most {gpu_hours:.1} GPU-hours if every job ran to its time limit");
    out
}

/// `["predict/a/0", "predict/a/1", "predict/a/2", "folds"]` ->
/// `"predict/a/{0-2}, folds"`; `-` for none.
pub fn deps_summary(deps: &[String]) -> String {
    if deps.is_empty() {
        return "-".into();
    }
    let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
    let mut plain: Vec<String> = Vec::new();
    for d in deps {
        match d.rsplit_once('/').and_then(|(stem, k)| k.parse::<u32>().ok().map(|k| (stem, k))) {
            Some((stem, k)) => match groups.iter_mut().find(|(s, _)| s == stem) {
                Some((_, ks)) => ks.push(k),
                None => groups.push((stem.to_string(), vec![k])),
            },
            None => plain.push(d.clone()),
        }
    }
    let mut parts = plain;
    for (stem, ks) in groups {
        if ks.len() == 1 {
            parts.push(format!("{stem}/{}", ks[0]));
        } else {
            parts.push(format!("{stem}/{{{}}}", ranges(&ks)));
        }
    }
    parts.join(", ")
}

/// `[0, 1, 2, 5]` -> `"0-2,5"` (Slurm's `--array` syntax too).
pub fn ranges(values: &[u32]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        parts.push(if v[i] == start { start.to_string() } else { format!("{start}-{}", v[i]) });
        i += 1;
    }
    parts.join(",")
}

/// Seconds as `1h30m`, `45m`, `2d`, `90s`.
pub fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_dependencies_compress_to_ranges() {
        let deps: Vec<String> = ["predict/a/0", "predict/a/1", "predict/a/2", "predict/b/4", "predict/a/7"].map(String::from).to_vec();
        assert_eq!(deps_summary(&deps), "predict/a/{0-2,7}, predict/b/4");
        assert_eq!(deps_summary(&["folds".to_string()]), "folds");
        assert_eq!(deps_summary(&[]), "-");
    }

    #[test]
    fn durations_read_like_the_spec() {
        assert_eq!(duration(5400), "1h30m");
        assert_eq!(duration(86_400 * 2), "2d");
        assert_eq!(duration(59), "59s");
    }

    #[test]
    fn json_lists_every_job_with_its_command_through_the_cluster_binary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let text = "experiment = \"e\"\n[storage]\nroot = \"memory://\"\n[folds]\nk = 2\n[cluster]\nimet = \"/opt/imet\"\n";
        std::fs::write(&path, text).unwrap();
        let source = SpecSource::file(&path);
        let v: serde_json::Value = serde_json::from_str(&plan_text(&source, true).unwrap()).unwrap();
        assert_eq!(v["experiment"], "e");
        assert_eq!(v["jobs"][0]["id"], "folds");
        assert_eq!(v["jobs"][0]["command"], format!("/opt/imet folds --spec {}", path.display()));
        assert_eq!(v["jobs"][0]["resources"]["cpus"], 4);
        assert!(plan_text(&source, false).unwrap().contains("/opt/imet folds"));
        // Overrides reach every command line, and the plan reads the spec with them.
        let source = SpecSource::new(&path, vec!["folds.k=3".parse().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&plan_text(&source, true).unwrap()).unwrap();
        assert_eq!(v["jobs"][0]["command"], format!("/opt/imet folds --spec {} --set folds.k=3", path.display()));
    }

    #[test]
    fn the_table_has_a_row_per_job_with_its_resources_and_command() {
        let spec = crate::spec::JobSpec::parse(
            "s.toml",
            r#"
experiment = "e"
[storage]
root = "memory://"
[folds]
k = 2
[[models]]
name = "a"
arch = "resnet18"
size = 64
train = { batch_size = 8, phases = [{ epochs = 1, optimizer = { kind = "sgd", lr = 0.1 } }] }
resources = { gpus = 1, memory_gb = 48, time_limit = "90m" }
[ensemble]
members = ["a"]
"#,
        )
        .unwrap();
        let plan = Plan::new(&spec, std::path::Path::new("jobs/s.toml")).unwrap();
        let t = table(&plan, "imet");
        assert_eq!(t.lines().count(), 2 + plan.jobs.len() + 1, "{t}");
        let row = t.lines().find(|l| l.starts_with("train/a/1")).unwrap();
        for cell in ["folds", " 1 ", "48G", "1h30m", "imet train --spec jobs/s.toml --model a --fold 1"] {
            assert!(row.contains(cell), "{cell} missing in {row}");
        }
        assert!(t.lines().any(|l| l.starts_with("ensemble") && l.contains("predict/a/{0-1}")), "{t}");
    }
}
