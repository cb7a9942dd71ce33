//! The annotation files: `train.csv` (id, space-separated attribute ids) and
//! `sample_submission.csv` (the test ids, in submission order). Reads CSV
//! bytes, writes nothing.

use super::labels::{check_header, csv_reader, excerpt, AttributeId, Vocabulary};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

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

/// The rows of an `id,attribute_ids` file: line number, a valid id (unique
/// in the file) and the raw attribute field.
fn id_rows(file: &str, bytes: &[u8]) -> Result<Vec<(usize, ImageId, String)>> {
    let mut rdr = csv_reader(bytes);
    check_header(file, &mut rdr, &["id", "attribute_ids"])?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| Error::input(file, line, format!("unreadable CSV row: {e}")))?;
        if rec.len() != 2 {
            return Err(Error::input(file, line, format!("expected 2 fields (id,attribute_ids), found {}", rec.len())));
        }
        let id = ImageId::new(rec[0].trim()).map_err(|m| Error::input(file, line, m))?;
        if !seen.insert(id.clone()) {
            return Err(Error::input(file, line, format!("duplicate image id `{id}`")));
        }
        out.push((line, id, rec[1].to_string()));
    }
    Ok(out)
}

/// The training annotations: one entry per image, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotations {
    pub ids: Vec<ImageId>,
    /// Sorted, de-duplicated attribute ids of each image (never empty).
    pub labels: Vec<Vec<AttributeId>>,
}

impl Annotations {
    /// Parses `train.csv` against `vocab`.
    ///
    /// # Errors
    /// [`Error::Input`] naming `file` and line for a bad id, a duplicate id,
    /// an empty label list or an attribute id outside the vocabulary.
    pub fn parse(file: &str, bytes: &[u8], vocab: &Vocabulary) -> Result<Self> {
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        for (line, id, attrs) in id_rows(file, bytes)? {
            let mut row: Vec<AttributeId> = Vec::new();
            for raw in attrs.split_ascii_whitespace() {
                row.push(vocab.check_id(file, line, raw)?);
            }
            if row.is_empty() {
                return Err(Error::input(file, line, format!("image `{id}` has no attribute ids; every training image needs at least one")));
            }
            row.sort_unstable();
            row.dedup();
            ids.push(id);
            labels.push(row);
        }
        if ids.is_empty() {
            return Err(Error::input(file, 1, "no images; train.csv needs at least one row"));
        }
        Ok(Annotations { ids, labels })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Multi-hot labels, row-major `[images, classes]`.
    pub fn multi_hot(&self, classes: usize) -> Vec<u8> {
        let mut out = vec![0u8; self.len() * classes];
        for (r, row) in self.labels.iter().enumerate() {
            for a in row {
                out[r * classes + a.0 as usize] = 1;
            }
        }
        out
    }

    /// `train.csv` text for these annotations.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("id,attribute_ids\n");
        for (id, row) in self.ids.iter().zip(&self.labels) {
            let joined: Vec<String> = row.iter().map(|a| a.0.to_string()).collect();
            out.push_str(&format!("{id},{}\n", joined.join(" ")));
        }
        out
    }
}

/// The test ids from `sample_submission.csv`, in its order (the order of
/// the submission).
#[derive(Clone, Debug, PartialEq)]
pub struct TestIds {
    pub ids: Vec<ImageId>,
}

impl TestIds {
    /// Parses `sample_submission.csv`; the attribute column is a placeholder
    /// and is only checked to be present.
    ///
    /// # Errors
    /// [`Error::Input`] naming `file` and line for a bad or duplicate id.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self> {
        let ids: Vec<ImageId> = id_rows(file, bytes)?.into_iter().map(|(_, id, _)| id).collect();
        if ids.is_empty() {
            return Err(Error::input(file, 1, "no test ids; sample_submission.csv needs at least one row"));
        }
        Ok(TestIds { ids })
    }

    /// `sample_submission.csv` text with the competition's placeholder labels.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("id,attribute_ids\n");
        for id in &self.ids {
            out.push_str(&format!("{id},0 1 2\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocabulary {
        Vocabulary::from_names(vec!["culture::a".into(), "tag::b".into(), "tag::c".into()]).unwrap()
    }

    #[test]
    fn accepts_12_to_16_lowercase_hex_only() {
        assert!(ImageId::new("1000483014d9").is_ok());
        assert!(ImageId::new("1000483014d91860").is_ok());
        for bad in ["", "1000483014d", "1000483014d918601", "1000483014D91860", "../../etc/pass", "10004830/4d91860", "..", "1000483014d9186 "] {
            assert!(ImageId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parses_labels_sorted_and_deduplicated() {
        let a = Annotations::parse("train.csv", b"id,attribute_ids\n1000483014d91860,2 0 2\n", &vocab()).unwrap();
        assert_eq!(a.labels[0], vec![AttributeId(0), AttributeId(2)]);
        assert_eq!(a.multi_hot(3), vec![1, 0, 1]);
    }

    #[test]
    fn names_the_line_of_an_unknown_attribute() {
        let err = Annotations::parse("train.csv", b"id,attribute_ids\n1000483014d91860,1\n1000fe2e667721fe,7\n", &vocab()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("train.csv:3:") && msg.contains("unknown attribute id 7"), "{msg}");
    }

    #[test]
    fn rejects_duplicates_empty_labels_and_bad_ids() {
        for (body, needle) in [
            ("1000483014d91860,1\n1000483014d91860,2\n", "duplicate"),
            ("1000483014d91860,\n", "no attribute ids"),
            ("../secret/000000,1\n", "lowercase hex"),
            ("1000483014d91860\n", "expected 2 fields"),
            ("1000483014d91860,x\n", "not a non-negative integer"),
        ] {
            let text = format!("id,attribute_ids\n{body}");
            let err = Annotations::parse("train.csv", text.as_bytes(), &vocab()).unwrap_err();
            assert!(err.to_string().contains(needle), "{body:?}: {err}");
        }
    }

    #[test]
    fn parses_test_ids_in_order() {
        let t = TestIds::parse("sample_submission.csv", b"id,attribute_ids\n10045628394b0c85,0 1 2\n1002e7c8e9172e5c,0 1 2\n").unwrap();
        assert_eq!(t.ids[0].as_str(), "10045628394b0c85");
        assert_eq!(TestIds::parse("s.csv", t.to_csv().as_bytes()).unwrap(), t);
    }
}
