//! Spec overrides: `--set key.path=value` on every command that reads a
//! spec. The spec file is parsed to a TOML document, each override is
//! written at its path, and the document is then read and validated like
//! any spec, so values are typed by the spec's own types.
//!
//! A path is dot-separated keys, each optionally followed by selectors of
//! array elements: `[2]` by position, `[r18]` by the element's `name`
//! (`models[r18].train.batch_size=16`, `stages[clean].drop_noisy.fraction=0.1`,
//! `image.augment[1].hflip.p=0.3`). Missing tables on the way are created.
//! The value is read as a TOML value (`16`, `0.1`, `true`, `"text"`,
//! `[1, 2]`, `{ p = 0.5 }`), else taken as a string (`s3://bucket/w`), and
//! taken as a string too when the spec wants one there (`experiment=123`).
//!
//! [`SpecSource`] is a spec file with its overrides: what a command was
//! given, and the `--spec P --set ...` arguments that make a child job read
//! the same spec.

use super::JobSpec;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One step of an override path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// A key of a table.
    Key(String),
    /// An array element by position.
    Index(usize),
    /// An array element by its `name`.
    Name(String),
}

/// One `--set key.path=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// The path as written (`models[r18].train.batch_size`).
    pub path: String,
    /// The value as written (`16`).
    pub value: String,
    steps: Vec<Step>,
}

impl std::fmt::Display for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.path, self.value)
    }
}

impl FromStr for Override {
    type Err = String;

    /// Parses `key.path=value`.
    fn from_str(s: &str) -> std::result::Result<Override, String> {
        let Some((path, value)) = s.split_once('=') else {
            return Err(format!("{s:?} has no `=`: write KEY=VALUE, e.g. `models[r18].train.batch_size=16`"));
        };
        let path = path.trim();
        let steps = parse_path(path).map_err(|e| format!("`{path}`: {e}"))?;
        Ok(Override { path: path.to_string(), value: value.trim().to_string(), steps })
    }
}

/// Splits `a.b[c][0].d` into steps.
fn parse_path(path: &str) -> std::result::Result<Vec<Step>, String> {
    if path.is_empty() {
        return Err("the key path is empty; write e.g. `folds.k=5`".into());
    }
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if key.is_empty() || key.contains(']') {
            return Err(format!("`{part}` does not start with a key; write `key`, `key[0]` or `key[name]` between dots"));
        }
        steps.push(Step::Key(key.to_string()));
        while !rest.is_empty() {
            let Some(end) = rest.find(']').filter(|_| rest.starts_with('[')) else {
                return Err(format!("`{part}`: a selector is `[position]` or `[name]`, and nothing may follow it but another selector"));
            };
            let sel = rest[1..end].trim();
            if sel.is_empty() || sel.contains('[') {
                return Err(format!("`{part}`: empty or nested selector; write `[0]` or `[name]`"));
            }
            steps.push(match sel.parse::<usize>() {
                Ok(i) => Step::Index(i),
                Err(_) => Step::Name(sel.to_string()),
            });
            rest = &rest[end + 1..];
        }
    }
    Ok(steps)
}

/// The TOML type of `v`, for messages.
fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl Override {
    /// The value read as TOML, or `None` when it is not a TOML value (it is
    /// then a string).
    fn typed_value(&self) -> Option<toml::Value> {
        let doc: toml::Table = format!("v = {}", self.value).parse().ok()?;
        doc.get("v").cloned()
    }

    /// Writes `value` at the override's path in `doc`.
    ///
    /// # Errors
    /// A message naming the part of the path that does not resolve: a
    /// selector on something that is not an array, an element name or
    /// position the array does not have, a key under a value that is not a
    /// table.
    fn write(&self, doc: &mut toml::Table, value: toml::Value) -> std::result::Result<(), String> {
        let mut root = toml::Value::Table(std::mem::take(doc));
        let result = write_at(&mut root, &self.steps, "", value);
        if let toml::Value::Table(t) = root {
            *doc = t;
        }
        result
    }
}

/// Writes `value` at `steps` under `here` (reached by the path `at`).
fn write_at(here: &mut toml::Value, steps: &[Step], at: &str, value: toml::Value) -> std::result::Result<(), String> {
    let (step, rest) = steps.split_first().expect("a path has at least one step");
    match step {
        Step::Key(k) => {
            let Some(table) = here.as_table_mut() else {
                return Err(format!("`{at}` is {}, not a table: it has no key `{k}`", type_name(here)));
            };
            let path = join(at, k);
            let Some(next) = rest.first() else {
                table.insert(k.clone(), value);
                return Ok(());
            };
            // A table on the way that the file leaves out is created; an
            // array is only addressed, never created.
            if !table.contains_key(k) {
                if !matches!(next, Step::Key(_)) {
                    return Err(format!("`{path}` is not in the spec: there is no element to select"));
                }
                table.insert(k.clone(), toml::Value::Table(toml::Table::new()));
            }
            write_at(table.get_mut(k).expect("present or inserted above"), rest, &path, value)
        }
        Step::Index(_) | Step::Name(_) => {
            let kind = type_name(here);
            let Some(items) = here.as_array_mut() else {
                let sel = match step {
                    Step::Index(n) => n.to_string(),
                    Step::Name(s) | Step::Key(s) => s.clone(),
                };
                return Err(format!("`{at}` is {kind}, not an array: it has no element [{sel}]"));
            };
            let (pos, path) = match step {
                Step::Index(n) if *n < items.len() => (*n, format!("{at}[{n}]")),
                Step::Index(n) => return Err(format!("`{at}` has {} element(s): [{n}] is out of range (positions start at 0)", items.len())),
                Step::Name(name) => {
                    let name_of = |t: &toml::Value| t.get("name").and_then(|n| n.as_str()).map(str::to_string);
                    let Some(pos) = items.iter().position(|t| name_of(t).as_deref() == Some(name.as_str())) else {
                        let names: Vec<String> = items.iter().filter_map(name_of).collect();
                        return Err(if names.is_empty() {
                            format!("`{at}` has no element named {name:?} (its elements have no `name`; select by position, e.g. `{at}[0]`)")
                        } else {
                            format!("`{at}` has no element named {name:?}; its names are {names:?}")
                        });
                    };
                    (pos, format!("{at}[{name}]"))
                }
                Step::Key(_) => unreachable!("matched above"),
            };
            if rest.is_empty() {
                items[pos] = value;
                return Ok(());
            }
            write_at(&mut items[pos], rest, &path, value)
        }
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// Reads `doc` as a spec (types and unknown keys; no range checks).
fn deserialize(doc: &toml::Table) -> std::result::Result<JobSpec, String> {
    JobSpec::deserialize(toml::Value::Table(doc.clone())).map_err(|e| e.to_string().trim().replace('\n', " "))
}

/// `text` (the spec file `origin`) with `overrides` applied, read and
/// validated as [`JobSpec::parse`] does.
///
/// # Errors
/// [`Error::Spec`] naming the override (its path, and what the spec
/// expects there: the type, or the keys allowed at that level) or, for
/// range checks, the field and the overrides given.
pub fn parse_with(origin: &str, text: &str, overrides: &[Override]) -> Result<JobSpec> {
    if overrides.is_empty() {
        return JobSpec::parse(origin, text);
    }
    let spec_err = |message: String| Error::Spec { path: origin.to_string(), message };
    let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| spec_err(e.to_string().trim().to_string()))?;
    let mut readable = deserialize(&doc).is_ok();
    for o in overrides {
        let typed = o.typed_value();
        let before = doc.clone();
        let first = typed.clone().unwrap_or_else(|| toml::Value::String(o.value.clone()));
        o.write(&mut doc, first).map_err(|m| spec_err(format!("--set {o}: {m}")))?;
        let mut outcome = deserialize(&doc);
        // A value that reads as TOML but where the spec wants a string
        // (`experiment=123`) is the string as written.
        if outcome.is_err() && typed.as_ref().is_some_and(|v| !v.is_str()) {
            let mut as_string = before.clone();
            o.write(&mut as_string, toml::Value::String(o.value.clone())).map_err(|m| spec_err(format!("--set {o}: {m}")))?;
            if let Ok(s) = deserialize(&as_string) {
                doc = as_string;
                outcome = Ok(s);
            }
        }
        match outcome {
            Ok(_) => readable = true,
            // The spec read before this override: the override broke it.
            Err(e) if readable => return Err(spec_err(format!("--set {o}: {e}"))),
            Err(_) => {}
        }
    }
    let given: Vec<String> = overrides.iter().map(|o| format!("--set {o}")).collect();
    let spec = deserialize(&doc).map_err(|e| spec_err(format!("{e} (with {})", given.join(" "))))?;
    spec.validate().map_err(|m| spec_err(format!("{m} (with {})", given.join(" "))))?;
    Ok(spec)
}

/// A spec file and the overrides applied on top of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecSource {
    pub path: PathBuf,
    pub overrides: Vec<Override>,
}

impl SpecSource {
    /// The file alone.
    pub fn file(path: impl Into<PathBuf>) -> SpecSource {
        SpecSource { path: path.into(), overrides: Vec::new() }
    }

    /// The file with `overrides`.
    pub fn new(path: impl Into<PathBuf>, overrides: Vec<Override>) -> SpecSource {
        SpecSource { path: path.into(), overrides }
    }

    /// Reads the file, applies the overrides, validates.
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable file; as [`parse_with`].
    pub fn load(&self) -> Result<JobSpec> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| Error::Io { path: self.path.clone(), source })?;
        parse_with(&self.path.display().to_string(), &text, &self.overrides)
    }

    /// The same source with the file at `path` (the overrides kept).
    pub fn at(&self, path: &Path) -> SpecSource {
        SpecSource { path: path.to_path_buf(), overrides: self.overrides.clone() }
    }

    /// `--spec P` and one `--set K=V` per override: the arguments that make
    /// a child command read this spec.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--spec".to_string(), self.path.display().to_string()];
        for o in &self.overrides {
            args.extend(["--set".to_string(), o.to_string()]);
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
experiment = "e"
[storage]
root = "memory://"
[folds]
k = 5
[[models]]
name = "r18"
arch = "resnet18"
size = 64
eval_resize = "resize"
augment = [{ random_resized_crop = { size = 64 } }, { hflip = {} }]
[models.train]
batch_size = 32
phases = [{ epochs = 1, optimizer = { kind = "adamw", lr = 1e-3 } }]
[[models]]
name = "r34"
arch = "resnet34"
size = 48
eval_resize = "resize"
augment = [{ random_resized_crop = { size = 48 } }]
[models.train]
batch_size = 32
phases = [{ epochs = 1, optimizer = { kind = "adamw", lr = 1e-3 } }]
[ensemble]
members = ["r18", "r34"]
"#;

    fn set(items: &[&str]) -> Vec<Override> {
        items.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn err(items: &[&str]) -> String {
        parse_with("s.toml", SPEC, &set(items)).unwrap_err().to_string()
    }

    #[test]
    fn paths_split_into_keys_positions_and_names() {
        let o: Override = "models[r18].train.phases[0].epochs = 4".parse().unwrap();
        assert_eq!((o.path.as_str(), o.value.as_str()), ("models[r18].train.phases[0].epochs", "4"));
        assert_eq!(
            o.steps,
            [Step::Key("models".into()), Step::Name("r18".into()), Step::Key("train".into()), Step::Key("phases".into()), Step::Index(0), Step::Key("epochs".into())]
        );
        assert_eq!(o.to_string(), "models[r18].train.phases[0].epochs=4");
        for bad in ["folds.k", "=3", "a..b=1", "a[=1", "a[]=1", "a[0]b=1", "[0]=1"] {
            assert!(bad.parse::<Override>().is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_address_elements_by_name_and_by_position() {
        let s = parse_with("s.toml", SPEC, &set(&["models[r18].train.batch_size=16", "models[1].size=40", "models[r34].augment[0].random_resized_crop.size=40"])).unwrap();
        assert_eq!((s.models[0].train.batch_size, s.models[1].train.batch_size), (16, 32));
        assert_eq!(s.models[1].size, 40);
        let base = JobSpec::parse("s.toml", SPEC).unwrap();
        assert_ne!(s.model_hash(&s.models[0]), base.model_hash(&base.models[0]));
    }

    #[test]
    fn values_are_typed_by_the_spec() {
        let s = parse_with("s.toml", SPEC, &set(&["experiment=123", "storage.root=out/x", "folds.k=4", "ensemble.members=[\"r18\"]", "models[r18].train.mixup={ alpha = 0.4 }"])).unwrap();
        assert_eq!((s.experiment.as_str(), s.storage.root.as_str(), s.folds.k), ("123", "out/x", 4));
        assert_eq!(s.ensemble.as_ref().unwrap().members, ["r18"]);
        assert!(s.models[0].train.mixup.is_some());
        // Tables left out of the file are created on the way.
        let s = parse_with("s.toml", SPEC, &set(&["models[r18].train.mixup.alpha=0.2"])).unwrap();
        assert_eq!(s.models[0].train.mixup.unwrap().alpha, 0.2);
    }

    #[test]
    fn errors_name_the_override_and_what_the_spec_expects() {
        let e = err(&["models[r18].train.batch_size=abc"]);
        assert!(e.contains("--set models[r18].train.batch_size=abc") && e.contains("expected usize") && e.contains("models.train.batch_size"), "{e}");
        let e = err(&["models[r18].train.batch_sise=16"]);
        assert!(e.contains("unknown field `batch_sise`") && e.contains("batch_size") && e.contains("effective_batch"), "{e}");
        let e = err(&["models[r50].size=64"]);
        assert!(e.contains("no element named \"r50\"") && e.contains("[\"r18\", \"r34\"]"), "{e}");
        let e = err(&["models[7].size=64"]);
        assert!(e.contains("2 element(s)") && e.contains("[7]"), "{e}");
        let e = err(&["folds.k.x=1"]);
        assert!(e.contains("`folds.k` is an integer, not a table"), "{e}");
        let e = err(&["folds[0]=1"]);
        assert!(e.contains("`folds` is a table, not an array"), "{e}");
        let e = err(&["stages[clean].init=\"source\""]);
        assert!(e.contains("`stages` is not in the spec"), "{e}");
        // Range checks run after every override, and say which were given.
        let e = err(&["folds.k=41"]);
        assert!(e.contains("folds.k") && e.contains("(with --set folds.k=41)"), "{e}");
    }

    #[test]
    fn no_overrides_reads_the_file_as_it_is() {
        assert_eq!(parse_with("s.toml", SPEC, &[]).unwrap(), JobSpec::parse("s.toml", SPEC).unwrap());
    }

    #[test]
    fn a_source_passes_its_overrides_to_children() {
        let s = SpecSource::new("jobs/s.toml", set(&["models[r18].train.batch_size=16"]));
        assert_eq!(s.args(), ["--spec", "jobs/s.toml", "--set", "models[r18].train.batch_size=16"]);
        assert_eq!(SpecSource::file("a.toml").args(), ["--spec", "a.toml"]);
    }
}
