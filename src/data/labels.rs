//! The label vocabulary from `labels.csv`: 1,103 attributes in two groups,
//! `culture::` (ids 0-397 in the competition) and `tag::`. Reads CSV bytes,
//! writes nothing.

use crate::error::{Error, Result};
use crate::ids::excerpt;
use sha2::{Digest, Sha256};

pub use crate::ids::{AttributeId, Group};

/// The attribute vocabulary: names in id order, and each one's group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocabulary {
    names: Vec<String>,
    groups: Vec<Group>,
}

impl Vocabulary {
    /// Parses `labels.csv` (`attribute_id,attribute_name`). Ids must run
    /// 0..n in order; names must start with `culture::` or `tag::` and hold
    /// no comma, quote or control character.
    ///
    /// # Errors
    /// [`Error::Input`] naming `file`, the line and the bad value.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self> {
        let mut rdr = csv_reader(bytes);
        check_header(file, &mut rdr, &["attribute_id", "attribute_name"])?;
        let mut names = Vec::new();
        let mut groups = Vec::new();
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| Error::input(file, line, format!("unreadable CSV row: {e}")))?;
            if rec.len() != 2 {
                return Err(Error::input(file, line, format!("expected 2 fields, found {}", rec.len())));
            }
            let id: u32 = rec[0].trim().parse().map_err(|_| {
                Error::input(file, line, format!("attribute_id `{}` is not a non-negative integer", excerpt(&rec[0])))
            })?;
            if id as usize != names.len() {
                return Err(Error::input(
                    file,
                    line,
                    format!("attribute_id {id} out of order; ids must run 0, 1, 2, ... (expected {})", names.len()),
                ));
            }
            if id > u16::MAX as u32 {
                return Err(Error::input(file, line, format!("attribute_id {id} exceeds {}", u16::MAX)));
            }
            let name = rec[1].trim();
            if name.chars().any(|c| c == ',' || c == '"' || c.is_control()) {
                // `to_csv` (and so the vocabulary hash) writes names unquoted.
                return Err(Error::input(
                    file,
                    line,
                    format!("attribute_name {:?} holds a comma, quote or control character; names are plain text", excerpt(name)),
                ));
            }
            let group = if name.starts_with("culture::") {
                Group::Culture
            } else if name.starts_with("tag::") {
                Group::Tag
            } else {
                return Err(Error::input(
                    file,
                    line,
                    format!("attribute_name `{}` must start with `culture::` or `tag::`", excerpt(name)),
                ));
            };
            names.push(name.to_string());
            groups.push(group);
        }
        if names.is_empty() {
            return Err(Error::input(file, 1, "no attributes; labels.csv needs at least one row"));
        }
        Ok(Vocabulary { names, groups })
    }

    /// Builds a vocabulary from names (each `culture::...` or `tag::...`).
    pub fn from_names(names: Vec<String>) -> Result<Self> {
        let mut csv = String::from("attribute_id,attribute_name\n");
        for (i, n) in names.iter().enumerate() {
            csv.push_str(&format!("{i},{n}\n"));
        }
        Self::parse("<names>", csv.as_bytes())
    }

    /// `labels.csv` bytes for this vocabulary.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("attribute_id,attribute_name\n");
        for (i, n) in self.names.iter().enumerate() {
            out.push_str(&format!("{i},{n}\n"));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, id: AttributeId) -> &str {
        &self.names[id.0 as usize]
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn group(&self, id: AttributeId) -> Group {
        self.groups[id.0 as usize]
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Ids of the attributes in `group`, ascending.
    pub fn ids_in(&self, group: Group) -> Vec<AttributeId> {
        (0..self.len()).filter(|&i| self.groups[i] == group).map(|i| AttributeId(i as u16)).collect()
    }

    /// Checks that `raw` (a field of `file` at `line`) is an id of this vocabulary.
    pub fn check_id(&self, file: &str, line: usize, raw: &str) -> Result<AttributeId> {
        let id: u32 = raw.parse().map_err(|_| {
            Error::input(file, line, format!("attribute id `{}` is not a non-negative integer", excerpt(raw)))
        })?;
        if (id as usize) >= self.len() {
            return Err(Error::input(
                file,
                line,
                format!("unknown attribute id {id}; labels.csv defines ids 0..{}", self.len() - 1),
            ));
        }
        Ok(AttributeId(id as u16))
    }

    /// sha256 of the canonical `labels.csv` text: predictions carry it so
    /// files from different vocabularies are never blended.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.to_csv().as_bytes()))
    }
}

pub(crate) fn csv_reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes)
}

pub(crate) fn check_header(file: &str, rdr: &mut csv::Reader<&[u8]>, expected: &[&str]) -> Result<()> {
    let mut rec = csv::StringRecord::new();
    let got = rdr
        .read_record(&mut rec)
        .map_err(|e| Error::input(file, 1, format!("unreadable header: {e}")))?;
    if !got {
        return Err(Error::input(file, 1, format!("empty file; expected header `{}`", expected.join(","))));
    }
    let fields: Vec<&str> = rec.iter().map(|f| f.trim().trim_start_matches('\u{feff}')).collect();
    if fields != expected {
        return Err(Error::input(
            file,
            1,
            format!("header is `{}`, expected `{}`", excerpt(&fields.join(",")), expected.join(",")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_and_hash_is_stable() {
        let v = Vocabulary::parse("labels.csv", b"attribute_id,attribute_name\n0,culture::a\n1,tag::b\n").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v.group(AttributeId(0)), Group::Culture);
        assert_eq!(v.ids_in(Group::Tag), vec![AttributeId(1)]);
        assert_eq!(v.hash(), Vocabulary::from_names(v.names().to_vec()).unwrap().hash());
    }

    #[test]
    fn rejects_out_of_order_ids_naming_the_line() {
        let err = Vocabulary::parse("labels.csv", b"attribute_id,attribute_name\n0,culture::a\n2,tag::b\n").unwrap_err();
        assert!(err.to_string().starts_with("labels.csv:3:"), "{err}");
    }

    #[test]
    fn rejects_names_outside_both_groups() {
        let err = Vocabulary::parse("labels.csv", b"attribute_id,attribute_name\n0,medium::oil\n").unwrap_err();
        assert!(err.to_string().contains("medium::oil"), "{err}");
    }

    #[test]
    fn names_that_would_not_survive_to_csv_are_refused() {
        // Quoted, these parse; written back unquoted, `tag::x\n1,tag::y` would
        // read (and hash) as two names.
        for name in ["\"tag::a,b\"", "\"tag::x\n1,tag::y\"", "\"tag::q\"\"uote\"", "tag::tab\there"] {
            let text = format!("attribute_id,attribute_name\n0,{name}\n");
            let err = Vocabulary::parse("labels.csv", text.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("plain text"), "{name}: {err}");
        }
    }

    #[test]
    fn a_huge_field_is_quoted_only_in_part() {
        let text = format!("attribute_id,attribute_name\n0,{}\n", "x".repeat(1 << 20));
        let err = Vocabulary::parse("labels.csv", text.as_bytes()).unwrap_err().to_string();
        assert!(err.len() < 300 && err.contains("(1048576 bytes)"), "{}", &err[..err.len().min(300)]);
    }

    #[test]
    fn rejects_wrong_header() {
        let err = Vocabulary::parse("labels.csv", b"id,name\n0,tag::a\n").unwrap_err();
        assert!(err.to_string().contains("labels.csv:1"), "{err}");
    }
}
