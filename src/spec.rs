//! Experiment specs: one TOML file per experiment (`jobs/*.toml`). Each
//! section is a plain struct with `deny_unknown_fields`, so a misspelt key
//! stops the job before any work; [`JobSpec::validate`] checks ranges.
//! Jobs hash the parts of the spec they depend on, so changing the ensemble
//! does not invalidate trained folds.

//!
//! Each stage owns its configuration types (`storage::StorageSection`,
//! `data::sample::DataSection`, `data::folds::FoldsSection`,
//! `image::ImageSection`, `train::config`, `predict::config`,
//! `ensemble::EnsembleSection`); this module composes them and owns only
//! what belongs to the experiment as a whole: its name and seed, the
//! `[[models]]` tables, resources and the `[cluster]` settings.

use crate::data::folds::FoldsSection;
use crate::data::sample::DataSection;
use crate::ensemble::EnsembleSection;
use crate::error::{Error, Result};
use crate::image::ImageSection;
use crate::storage::{Store, StorageSection};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

mod cluster;
mod inference;
mod models;
mod overrides;
mod schema;
mod stages;
pub use cluster::{is_dns_label, is_dns_subdomain, AwsBatchSettings, AwsSecret, ClusterSection, KubernetesSettings, SlurmSettings};
pub use inference::{EnsembleMode, InferenceSection};
pub use models::{parse_duration, FoldItem, ModelSpec, Resources};
pub use overrides::{parse_with, Override, SpecSource};
pub use schema::{json_schema, json_schema_text};
pub use stages::{Init, Stage, StageSpec, MAIN};

/// A whole experiment.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Name of the experiment: the `runs/{experiment}/` prefix.
    pub experiment: String,
    /// Master seed; stages derive their own seeds from it unless given.
    #[serde(default = "crate::seed::default_master")]
    pub seed: u64,
    pub storage: StorageSection,
    #[serde(default)]
    pub data: DataSection,
    pub folds: FoldsSection,
    /// Blending, thresholds and the submission (`imet ensemble`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleSection>,
    #[serde(default)]
    pub image: ImageSection,
    /// The models trained per fold (`[[models]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelSpec>,
    /// Later stages, in order (`[[stages]]`): each reads an earlier stage's
    /// ensemble and trains its own models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSpec>,
    /// How batch engines run the jobs (`imet submit`, `imet render`).
    #[serde(default, skip_serializing_if = "ClusterSection::is_default")]
    pub cluster: ClusterSection,
    /// Test-time inference: test images only, saved thresholds applied
    /// (`imet package` sets it; not part of any job's identity).
    #[serde(default, skip_serializing_if = "InferenceSection::is_default")]
    pub inference: InferenceSection,
}

impl JobSpec {
    /// Reads and validates the spec at `path`.
    ///
    /// # Errors
    /// [`Error::Spec`] naming the file and the field (unknown fields,
    /// wrong types, out-of-range values).
    pub fn load(path: &Path) -> Result<JobSpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        JobSpec::parse(&path.display().to_string(), &text)
    }

    /// Parses and validates spec text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<JobSpec> {
        let spec: JobSpec =
            toml::from_str(text).map_err(|e| Error::Spec { path: origin.to_string(), message: e.to_string().trim().to_string() })?;
        spec.validate().map_err(|message| Error::Spec { path: origin.to_string(), message })?;
        Ok(spec)
    }

    /// Range checks; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let name_ok = !self.experiment.is_empty()
            && self.experiment.len() <= 64
            && self.experiment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            && !self.experiment.starts_with('.');
        if !name_ok {
            return Err(format!(
                "`experiment` = {:?}: use 1-64 characters from a-z, 0-9, '-', '_', '.' (it becomes an object key)",
                self.experiment
            ));
        }
        self.folds.validate()?;
        self.storage.validate()?;
        self.data.validate(self.folds.k)?;
        validate_models(&self.models, self.ensemble.as_ref(), self.folds.k, "models", "ensemble")?;
        if let Some(e) = &self.ensemble {
            e.validate_groups(&[], MAIN)?;
        }
        let mut earlier = vec![MAIN];
        for st in &self.stages {
            st.validate(&earlier)?;
            let source = st.source.as_deref().unwrap_or(earlier[earlier.len() - 1]);
            if self.stage(source).ok().and_then(|s| s.ensemble).is_none() {
                return Err(format!(
                    "`stages[{}]` reads the ensemble of stage `{source}`, which has none: add its `[ensemble]` section",
                    st.name
                ));
            }
            let (models_at, ensemble_at) = (format!("stages[{}].models", st.name), format!("stages[{}].ensemble", st.name));
            validate_models(&st.models, Some(&st.ensemble), self.folds.k, &models_at, &ensemble_at)?;
            st.ensemble.validate_groups(&earlier, &st.name)?;
            if st.init == Init::Source {
                let src = self.stage(source).map_err(|e| e.to_string())?;
                if let Some(m) = st.models.iter().find(|m| src.model(&m.name).is_none()) {
                    return Err(format!(
                        "`stages[{}].init` = \"source\" but stage `{source}` has no model {:?} to start from",
                        st.name, m.name
                    ));
                }
            }
            earlier.push(&st.name);
        }
        self.image.validate()?;
        for st in self.stages() {
            for m in st.models {
                self.check_eval_geometry(&st, m)?;
            }
        }
        self.cluster.validate()?;
        self.inference.validate()?;
        Ok(())
    }

    /// Refuses an evaluation resize that shows validation and test images a
    /// geometry training never showed: the training pipeline's last sizing
    /// transform decides which `eval_resize` mirrors it.
    fn check_eval_geometry(&self, st: &Stage<'_>, m: &ModelSpec) -> std::result::Result<(), String> {
        let train = m.augment.as_ref().unwrap_or(&self.image.augment);
        let Some(g) = train.geometry() else { return Ok(()) };
        let want = crate::image::EvalResize::matching(g);
        if m.eval_resize == want {
            return Ok(());
        }
        let at = if st.spec.is_some() { format!("stages[{}].models[{}]", st.name, m.name) } else { format!("models[{}]", m.name) };
        let how = match g {
            crate::image::augment::Geometry::Whole => "resizes the whole image",
            crate::image::augment::Geometry::CropThenResize => "crops at most twice the size, then resizes",
            crate::image::augment::Geometry::NativeScale => "crops at native scale (padding small images)",
        };
        Err(format!(
            "`{at}.eval_resize` = \"{}\" but training {how}, so validation and test images would be seen at another scale; set `eval_resize = \"{}\"`",
            m.eval_resize.name(),
            want.name()
        ))
    }

    /// Every stage, the first one (`main`) first.
    pub fn stages(&self) -> Vec<Stage<'_>> {
        let mut out = vec![Stage { name: MAIN, spec: None, models: &self.models, ensemble: self.ensemble.as_ref(), source: None }];
        let mut previous = MAIN;
        for st in &self.stages {
            let source = st.source.as_deref().unwrap_or(previous);
            out.push(Stage { name: &st.name, spec: Some(st), models: &st.models, ensemble: Some(&st.ensemble), source: Some(source) });
            previous = &st.name;
        }
        out
    }

    /// The stage called `name` (`main`, or `None`, for the first).
    ///
    /// # Errors
    /// [`Error::Usage`] listing the spec's stages.
    pub fn stage(&self, name: &str) -> Result<Stage<'_>> {
        self.stages().into_iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.stages().iter().map(|s| s.name).collect();
            Error::Usage(format!("the spec has no stage {name:?}; its stages are {names:?}"))
        })
    }

    /// Model `name` of stage `stage` (`None`: the first stage).
    ///
    /// # Errors
    /// [`Error::Usage`] naming the stage's models.
    pub fn stage_model(&self, stage: Option<&str>, name: &str) -> Result<&ModelSpec> {
        let st = self.stage(stage.unwrap_or(MAIN))?;
        st.model(name).ok_or_else(|| {
            let names: Vec<&str> = st.models.iter().map(|m| m.name.as_str()).collect();
            Error::Usage(format!("stage `{}` has no model {name:?}; its models are {names:?}", st.name))
        })
    }

    /// A minimal spec for `imet folds --data ROOT --k K --seed S`.
    ///
    /// # Errors
    /// [`Error::Spec`] for a bad experiment name or `k` outside 2..=40.
    pub fn adhoc_folds(root: &str, experiment: &str, k: u8, seed: u64) -> Result<JobSpec> {
        // Built as text so sections other stages add keep their defaults.
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        let text = format!(
            "experiment = {}\nseed = {seed}\n[storage]\nroot = {}\n[folds]\nk = {k}\nseed = {seed}\n",
            quote(experiment),
            quote(root)
        );
        JobSpec::parse("<command line>", &text)
    }

    /// Opens the experiment's store with its retry and cache settings.
    ///
    /// # Errors
    /// As [`StorageSection::open`].
    pub fn open_store(&self) -> Result<Store> {
        self.storage.open()
    }

    /// The resolved spec as TOML (written beside the outputs).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a parsed spec always serialises back to TOML")
    }

    /// Hash of the parts of the spec the folds depend on (seed, data, folds).
    pub fn folds_hash(&self) -> String {
        hash_parts(&[
            serde_json::to_value(&self.data).expect("spec sections serialise"),
            serde_json::to_value(&self.folds).expect("spec sections serialise"),
        ])
    }

    /// The model called `name`.
    ///
    /// # Errors
    /// [`Error::Usage`] listing the spec's model names.
    pub fn model(&self, name: &str) -> Result<&ModelSpec> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            Error::Usage(format!("the spec has no model {name:?}; its models are {names:?}"))
        })
    }

    /// Hash of what one model's fold jobs depend on: seed, data, folds,
    /// image settings and that model's table (not the other models, not the
    /// ensemble).
    pub fn model_hash(&self, model: &ModelSpec) -> String {
        hash_parts(&[
            serde_json::json!(self.seed),
            serde_json::to_value(&self.data).expect("spec sections serialise"),
            serde_json::to_value(&self.folds).expect("spec sections serialise"),
            serde_json::to_value(&self.image).expect("spec sections serialise"),
            identity(model),
        ])
    }

    /// Hash of the first stage: the whole spec except where its storage
    /// lives, how jobs are scheduled (`[cluster]`) and the later stages.
    /// The first stage's ensemble carries it.
    pub fn hash(&self) -> String {
        let mut v = serde_json::to_value(self).expect("spec serialises");
        if let Some(o) = v.as_object_mut() {
            o.remove("storage");
            // Where and how jobs are scheduled does not change their outputs.
            o.remove("cluster");
            // Test-time inference applies what the same spec trained.
            o.remove("inference");
            o.remove("stages");
            if !self.models.is_empty() {
                o.insert("models".into(), self.models.iter().map(identity).collect());
            }
        }
        hash_parts(&[v])
    }
}

impl JobSpec {
    /// Hash of stage `name`: for the first stage [`JobSpec::hash`]; for a
    /// later one its whole table and its source stage's hash, so an edit
    /// upstream changes every stage downstream. Its ensemble carries it.
    ///
    /// # Panics
    /// For a name that is not a stage of the spec (callers pass names of
    /// [`JobSpec::stages`]).
    pub fn stage_hash(&self, name: &str) -> String {
        let st = self.stage(name).expect("a stage of this spec");
        match (st.spec, st.source) {
            (Some(spec), Some(source)) => hash_parts(&[serde_json::json!(self.stage_hash(source)), stage_identity(spec)]),
            _ => self.hash(),
        }
    }

    /// Hash of what the fold jobs of `model` in stage `stage` depend on:
    /// [`JobSpec::model_hash`] in the first stage; in a later one also the
    /// stage's data edits and init, and its source stage's hash.
    pub fn stage_model_hash(&self, stage: Option<&str>, model: &ModelSpec) -> String {
        let Some(name) = stage.filter(|s| *s != MAIN) else { return self.model_hash(model) };
        let st = self.stage(name).expect("a stage of this spec");
        let spec = st.spec.expect("a later stage has its table");
        let mut context = stage_identity(spec);
        if let Some(o) = context.as_object_mut() {
            o.remove("models");
            o.remove("ensemble");
        }
        hash_parts(&[
            serde_json::json!(self.model_hash(model)),
            context,
            serde_json::json!(self.stage_hash(st.source.unwrap_or(MAIN))),
        ])
    }

    /// Hash of stage `name`'s curate job: its data edits and its source.
    pub fn curate_hash(&self, name: &str) -> String {
        let st = self.stage(name).expect("a stage of this spec");
        let spec = st.spec.expect("a later stage has its table");
        let mut context = stage_identity(spec);
        if let Some(o) = context.as_object_mut() {
            o.remove("models");
            o.remove("ensemble");
            o.remove("init");
        }
        hash_parts(&[context, serde_json::json!(self.stage_hash(st.source.unwrap_or(MAIN)))])
    }
}

/// A stage's table as its identity (its models as their jobs' identity).
fn stage_identity(st: &StageSpec) -> serde_json::Value {
    let mut v = serde_json::to_value(st).expect("spec sections serialise");
    if let Some(o) = v.as_object_mut() {
        o.insert("models".into(), st.models.iter().map(identity).collect());
    }
    v
}

/// Checks one stage's models and ensemble; `models_at` and `ensemble_at`
/// name them in messages.
fn validate_models(models: &[ModelSpec], ensemble: Option<&EnsembleSection>, k: u8, models_at: &str, ensemble_at: &str) -> std::result::Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for m in models {
        m.validate(k).map_err(|e| if models_at == "models" { e } else { e.replacen("`models[", &format!("`{models_at}["), 1) })?;
        if !names.insert(m.name.as_str()) {
            return Err(format!("`{models_at}`: two models are named {:?}", m.name));
        }
    }
    let Some(e) = ensemble else { return Ok(()) };
    e.validate(k).map_err(|msg| if ensemble_at == "ensemble" { msg } else { msg.replace("`ensemble.", &format!("`{ensemble_at}.")) })?;
    if !models.is_empty() {
        if let Some(m) = e.members.iter().find(|m| !names.contains(m.as_str())) {
            return Err(format!("`{ensemble_at}.members` names {m:?}, which is not a `{models_at}` name ({names:?})"));
        }
    }
    let members: Vec<&ModelSpec> = models.iter().filter(|m| e.members.contains(&m.name)).collect();
    let subsets = members.iter().any(|m| m.folds.is_some());
    if subsets {
        let covered: std::collections::BTreeSet<u8> = members.iter().flat_map(|m| m.fold_list(k)).collect();
        if covered.is_empty() {
            return Err(format!("`{ensemble_at}.members` train no fold: no training image would be predicted"));
        }
        if !matches!(e.blend, crate::ensemble::BlendKind::Mean | crate::ensemble::BlendKind::Geometric) {
            return Err(format!(
                "`{ensemble_at}.blend` = {:?}: members on fold subsets are blended row by row over the members that cover each row; use `mean` or `geometric`",
                e.blend
            ));
        }
        if let Some(tf) = &e.test_folds {
            if let Some(m) = members.iter().find(|m| !m.fold_list(k).iter().any(|f| tf.contains(f))) {
                return Err(format!("`{ensemble_at}.test_folds` has none of the folds model {:?} trains", m.name));
            }
        }
    }
    Ok(())
}

/// A model's table as its jobs' identity: everything but what only decides
/// which checkpoints are kept (`train.checkpoints`).
fn identity(model: &ModelSpec) -> serde_json::Value {
    let mut v = serde_json::to_value(model).expect("spec sections serialise");
    if let Some(train) = v.get_mut("train").and_then(|t| t.as_object_mut()) {
        train.remove("checkpoints");
    }
    v
}

/// sha256 over the canonical JSON of `parts` (first 16 hex characters).
pub fn hash_parts(parts: &[serde_json::Value]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(serde_json::to_vec(p).expect("JSON values serialise"));
        h.update(b"\n");
    }
    hex::encode(h.finalize())[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "experiment = \"e\"\n[storage]\nroot = \"memory://\"\n[folds]\nk = 5\n";

    #[test]
    fn unknown_fields_are_named() {
        let err = JobSpec::parse("x.toml", &format!("{MINIMAL}kk = 1\n")).unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("kk"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let err = JobSpec::parse("x.toml", &MINIMAL.replace("k = 5", "k = 41")).unwrap_err().to_string();
        assert!(err.contains("folds.k"), "{err}");
        let err = JobSpec::parse("x.toml", &MINIMAL.replace("\"e\"", "\"../e\"")).unwrap_err().to_string();
        assert!(err.contains("experiment"), "{err}");
    }

    #[test]
    fn hash_ignores_storage_but_not_folds() {
        let a = JobSpec::parse("a", MINIMAL).unwrap();
        let b = JobSpec::parse("b", &MINIMAL.replace("memory://", "s3://x/y")).unwrap();
        let c = JobSpec::parse("c", &MINIMAL.replace("k = 5", "k = 6")).unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_ne!(a.folds_hash(), c.folds_hash());
    }

    #[test]
    fn resolved_spec_round_trips_through_toml() {
        let a = JobSpec::parse("a", MINIMAL).unwrap();
        assert_eq!(JobSpec::parse("again", &a.to_toml()).unwrap(), a);
    }

    #[test]
    fn the_image_section_parses_on_bad_image_and_augmentations() {
        let text = format!("{MINIMAL}[image]\non_bad_image = \"skip\"\naugment = [{{ random_resized_crop = {{ size = 64 }} }}, {{ hflip = {{}} }}]\n");
        let s = JobSpec::parse("x.toml", &text).unwrap();
        assert_eq!(s.image.on_bad_image, crate::image::OnBadImage::Skip);
        assert_eq!(s.image.augment.0.len(), 2);
        assert_eq!(JobSpec::parse("again", &s.to_toml()).unwrap(), s);
        let err = JobSpec::parse("x.toml", &format!("{MINIMAL}[image]\non_bad_image = \"ignore\"\n")).unwrap_err().to_string();
        assert!(err.contains("on_bad_image") || err.contains("ignore"), "{err}");
        let err = JobSpec::parse("x.toml", &format!("{MINIMAL}[image]\naugment = [{{ hflip = {{ p = 2.0 }} }}]\n")).unwrap_err().to_string();
        assert!(err.contains("hflip"), "{err}");
    }

    #[test]
    fn ensemble_section_has_defaults_and_checks_its_ranges() {
        let a = JobSpec::parse("a", &format!("{MINIMAL}[ensemble]\nmembers = [\"resnet34\"]\n")).unwrap();
        let e = a.ensemble.as_ref().unwrap();
        assert_eq!((e.threshold_bins, e.labels, e.tag_labels, e.strategies.len()), (100, [1, 0], [1, 8], 8));
        assert_eq!(JobSpec::parse("again", &a.to_toml()).unwrap(), a);
        for (bad, field) in [
            ("members = []", "ensemble.members"),
            ("members = [\"a\", \"a\"]", "twice"),
            ("members = [\"a\"]\ntest_folds = [5]", "ensemble.test_folds"),
            ("members = [\"a\"]\ntag_labels = [4, 2]", "ensemble.tag_labels"),
            ("members = [\"a\"]\nratio = 1.0", "ensemble.ratio"),
            ("members = [\"a\"]\nblend = \"median\"", "median"),
            ("members = [\"a\"]\nstrategies = [\"global\", \"magic\"]", "magic"),
        ] {
            let err = JobSpec::parse("x.toml", &format!("{MINIMAL}[ensemble]\n{bad}\n")).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn ensemble_elements_not_built_yet_are_refused_by_name() {
        for (line, element) in [
            ("level2 = { top_k = 0 }", "`ensemble.level2.top_k` is 0"),
            ("knn_tag_relevance = { k = 10, weight = 0.5 }", "`ensemble.knn_tag_relevance`: not supported yet: k-NN tag relevance"),
            ("member_folds = { a = [0, 1] }", "`ensemble.member_folds`: set each member's folds in its own table"),
        ] {
            let err = JobSpec::parse("x.toml", &format!("{MINIMAL}[ensemble]\nmembers = [\"a\"]\n{line}\n")).unwrap_err().to_string();
            assert!(err.contains(element), "{line}: {err}");
        }
    }
}
