//! The crate's layer rule, checked on the source: every `crate::` path in
//! `src/` (imports, inline paths, `use crate::{a, b}` groups, unit tests
//! included) names its own top-level module or one of a lower layer, never a
//! higher one and never a sibling of its own layer. The layers are read from
//! the table in `src/lib.rs`, so the rule and its documentation cannot part.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Module name -> layer, from the `//! | N | `a`, `b` | ... |` rows of lib.rs.
fn layers(lib: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! |") else { continue };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells.first().and_then(|c| c.parse::<u32>().ok()) else { continue };
        for m in cells[1].split(',') {
            out.insert(m.trim().trim_matches('`').to_string(), layer);
        }
    }
    out
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::` paths in `code` (comments
/// removed), each with the byte offset of its `crate::`. Groups may span
/// lines.
fn targets_at(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        // `$crate::` (macros) and `my_crate::` are not this crate's paths.
        let before = code[..at].chars().last();
        from = at + "crate::".len();
        let rest = &code[from..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let mut push = |t: String| found.push((at, t));
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::x, b, c::{y, z}}`: the first segment of each item at depth 0.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(ch);
                }
            }
            if !item.trim().is_empty() {
                push(first_segment(&item));
            }
        } else {
            push(first_segment(rest));
        }
    }
    found.retain(|(_, t)| !t.is_empty());
    found
}

fn targets(code: &str) -> Vec<String> {
    targets_at(code).into_iter().map(|(_, t)| t).collect()
}

/// `text` with every `//` comment blanked (line numbers kept).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn first_segment(s: &str) -> String {
    s.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The top-level module of a file under `src/` (`None` for lib.rs, main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next()?.as_os_str().to_string_lossy().to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

#[test]
fn no_module_imports_a_higher_layer_or_a_sibling() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let layers = layers(&lib);
    assert!(layers.len() >= 10, "the layer table of src/lib.rs was not found: {layers:?}");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let Some(&own) = layers.get(&module) else {
            violations.push(format!("{}: module `{module}` is not in the layer table of src/lib.rs", file.display()));
            continue;
        };
        let code = without_comments(&std::fs::read_to_string(file).expect("source is UTF-8"));
        for (at, target) in targets_at(&code) {
            if target == module {
                continue;
            }
            let Some(&theirs) = layers.get(&target) else { continue };
            if theirs >= own {
                let how = if theirs == own { "a sibling of its own layer" } else { "a higher layer" };
                let line = code[..at].matches('\n').count() + 1;
                violations.push(format!(
                    "{}:{line}: `{module}` (layer {own}) uses `crate::{target}` ({how}, {theirs})",
                    file.strip_prefix(&root).unwrap_or(file).display(),
                ));
            }
        }
    }
    assert!(violations.is_empty(), "imports against the layer order of src/lib.rs:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_every_form_of_path() {
    assert_eq!(targets("use crate::storage::{keys, Store};"), ["storage"]);
    assert_eq!(targets("use crate::{error::Result, ids::{Fold, ImageId}, seed};"), ["error", "ids", "seed"]);
    assert_eq!(targets("let x = crate::spec::JobSpec::load(p)?; crate::seed::splitmix(1)"), ["spec", "seed"]);
    assert!(targets("$crate::foo(); my_crate::x").is_empty());
    assert_eq!(targets("use crate::{\n    a::B,\n    c,\n};"), ["a", "c"]);
    assert_eq!(without_comments("x // crate::spec\n//! crate::jobs\ny"), "x \n\ny");
    let lib = "//! | layer | modules | what |\n//! | --- | --- | --- |\n//! | 0 | `error`, `ids` | floor |\n//! | 3 | `image` | x |\n";
    let l = layers(lib);
    assert_eq!((l["error"], l["ids"], l["image"]), (0, 0, 3));
}
