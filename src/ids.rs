//! Ground floor: the identifiers every stage shares (image ids, folds,
//! attribute ids and their groups). Imports no stage.

use serde::{Deserialize, Serialize};

/// An image id: 12 to 16 lowercase hex characters, as in the competition.
/// Ids become object keys (`train/{id}.png`), so nothing else is accepted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageId(String);

impl ImageId {
    /// # Errors
    /// A message saying why `raw` is not an id.
    pub fn new(raw: &str) -> std::result::Result<Self, String> {
        let ok_len = (12..=16).contains(&raw.len());
        let ok_chars = raw.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if raw.is_empty() {
            return Err("image id is empty".into());
        }
        if !ok_chars {
            return Err(format!("image id `{}` must be lowercase hex (0-9, a-f)", excerpt(&raw.escape_default().to_string())));
        }
        if !ok_len {
            return Err(format!("image id `{}` has {} characters; ids have 12 to 16", excerpt(raw), raw.len()));
        }
        Ok(ImageId(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageId {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        ImageId::new(&s)
    }
}

impl From<ImageId> for String {
    fn from(id: ImageId) -> String {
        id.0
    }
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `raw` (an untrusted id or field) for an error message: at most 64 characters, then how long it
/// was, so a huge field does not become a huge message.
pub fn excerpt(raw: &str) -> String {
    match raw.char_indices().nth(64) {
        None => raw.to_string(),
        Some((cut, _)) => format!("{}... ({} bytes)", &raw[..cut], raw.len()),
    }
}

/// A cross-validation fold index (0-based; at most 40 folds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fold(pub u8);

impl std::fmt::Display for Fold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Index of an attribute in `labels.csv` (the `attribute_id` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttributeId(pub u16);

impl std::fmt::Display for AttributeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The two attribute groups; thresholds and label-count limits differ by group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Culture,
    Tag,
}

impl Group {
    pub const ALL: [Group; 2] = [Group::Culture, Group::Tag];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Culture => "culture",
            Group::Tag => "tag",
        }
    }
}

/// The name of an experiment's first stage: its top-level `[[models]]` and
/// `[ensemble]`. Later stages (`[[stages]]`) have their own names.
pub const MAIN_STAGE: &str = "main";
