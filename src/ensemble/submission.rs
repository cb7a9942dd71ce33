//! The Kaggle submission file `runs/{exp}/ensemble/submission.csv`: header
//! `id,attribute_ids`, one row per test image in `sample_submission.csv`
//! order, attribute ids ascending and space-separated (the contract in
//! `schemas/submission.csv.json`). Writes CSV text; reads it back for checks.

use super::metric::LabelSets;
use crate::ids::ImageId;
use crate::error::{Error, Result};

/// The submission text for `ids` (sample_submission order) and their labels.
///
/// # Panics
/// When `labels` does not have one row per id (an invariant of callers).
pub fn to_csv(ids: &[ImageId], labels: &LabelSets) -> String {
    assert_eq!(ids.len(), labels.len(), "one label set per test id");
    let mut out = String::with_capacity(ids.len() * 40 + 20);
    out.push_str("id,attribute_ids\n");
    for (i, id) in ids.iter().enumerate() {
        out.push_str(id.as_str());
        out.push(',');
        for (k, c) in labels.row(i).iter().enumerate() {
            if k > 0 {
                out.push(' ');
            }
            out.push_str(&c.to_string());
        }
        out.push('\n');
    }
    out
}

/// Parses a submission (or any `id,attribute_ids` file) with attribute ids
/// below `classes`.
///
/// # Errors
/// [`Error::Input`] naming `file` and the line of a malformed row.
pub fn parse(file: &str, text: &str, classes: usize) -> Result<(Vec<ImageId>, LabelSets)> {
    let mut lines = text.lines();
    match lines.next().map(|h| h.trim_start_matches('\u{feff}').trim()) {
        Some("id,attribute_ids") => {}
        other => return Err(Error::input(file, 1, format!("header is {other:?}, expected `id,attribute_ids`"))),
    }
    let mut ids = Vec::new();
    let mut sets = LabelSets::new(classes);
    let mut row: Vec<u16> = Vec::new();
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        if line.trim().is_empty() {
            continue;
        }
        let (id, attrs) = line.split_once(',').ok_or_else(|| Error::input(file, n, "expected `id,attribute_ids`"))?;
        ids.push(ImageId::new(id.trim()).map_err(|m| Error::input(file, n, m))?);
        row.clear();
        for a in attrs.split_ascii_whitespace() {
            let v: usize = a.parse().map_err(|_| Error::input(file, n, format!("attribute id `{a}` is not a non-negative integer")))?;
            if v >= classes {
                return Err(Error::input(file, n, format!("attribute id {v} is not below the class count {classes}")));
            }
            row.push(v as u16);
        }
        sets.push(&row);
    }
    Ok((ids, sets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_id_order_and_list_ascending_ids() {
        let ids = vec![ImageId::new("ffff00000000").unwrap(), ImageId::new("000000000000aaaa").unwrap()];
        let labels = LabelSets::from_rows(1103, [vec![1102u16, 3, 40], vec![]]);
        let text = to_csv(&ids, &labels);
        assert_eq!(text, "id,attribute_ids\nffff00000000,3 40 1102\n000000000000aaaa,\n");
        assert_eq!(parse("s.csv", &text, 1103).unwrap(), (ids, labels));
    }

    #[test]
    fn parse_names_the_line_of_a_bad_attribute() {
        let err = parse("s.csv", "id,attribute_ids\nffff00000000,1 x\n", 5).unwrap_err().to_string();
        assert!(err.starts_with("s.csv:2:"), "{err}");
    }
}
