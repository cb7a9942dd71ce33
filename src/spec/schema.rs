//! The JSON Schema of experiment specs, generated from the spec's own
//! types (every section derives `schemars::JsonSchema`, which follows their
//! serde attributes: renames, defaults, `deny_unknown_fields`). `imet
//! schema` prints it; `schemas/spec.schema.json` is its committed copy,
//! for editors and for checking specs before a job reads them. Range checks
//! ([`super::JobSpec::validate`]) are not in the schema.

use super::JobSpec;

/// The JSON Schema (draft 2020-12) of a spec, as a JSON value. Keys are
/// sorted, so the same types give the same text.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(JobSpec);
    schema.insert("title".into(), "imet experiment spec".into());
    schema.to_value()
}

/// [`json_schema`] as the text `imet schema` prints (pretty JSON and a
/// newline), the text of `schemas/spec.schema.json`.
pub fn json_schema_text() -> String {
    serde_json::to_string_pretty(&json_schema()).expect("a JSON value serialises") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_closes_the_spec_tables_and_names_its_sections() {
        let s = json_schema();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(s["additionalProperties"], false, "deny_unknown_fields becomes a closed object");
        let props = s["properties"].as_object().unwrap();
        for key in ["experiment", "seed", "storage", "data", "folds", "ensemble", "image", "models", "stages", "cluster"] {
            assert!(props.contains_key(key), "{key} missing");
        }
        let required: Vec<&str> = s["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(required, ["experiment", "storage", "folds"]);
    }
}
