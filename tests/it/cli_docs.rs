//! The command line documents itself: shell completions name every
//! subcommand (and bash accepts the script), the man pages render with
//! groff, and `imet --help` lists the environment variables the program reads.

use crate::common;

use std::process::Command;

fn imet(args: &[&str]) -> String {
    let out = Command::new(common::imet_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "imet {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `imet --help` lists.
fn subcommands() -> Vec<String> {
    let help = imet(&["--help"]);
    let section = help.split("Commands:").nth(1).expect("a Commands section").split("\n\n").next().unwrap().to_string();
    let names: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|n| n != "help")
        .collect();
    assert!(names.len() >= 15 && names.iter().any(|n| n == "report"), "{names:?}");
    names
}

#[test]
fn completions_name_every_subcommand_in_every_shell() {
    let names = subcommands();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = imet(&["completions", shell]);
        for n in &names {
            assert!(script.contains(n.as_str()), "{shell} completions lack `{n}`");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imet.bash");
    std::fs::write(&path, imet(&["completions", "bash"])).unwrap();
    let out = Command::new("bash").arg("-c").arg(format!("source {} && complete -p imet", path.display())).output().unwrap();
    assert!(out.status.success(), "bash rejects the script: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("imet"));
}

#[test]
fn man_pages_render_with_groff_one_per_subcommand() {
    let page = imet(&["man"]);
    assert!(page.contains("\n.TH IMET 1 "), "{}", &page[..page.len().min(300)]);
    assert!(page.contains(".SH ENVIRONMENT") && page.contains("IMET_ROOT"));
    let dir = tempfile::tempdir().unwrap();
    let listed = imet(&["man", "--out", dir.path().to_str().unwrap()]);
    let names = subcommands();
    assert_eq!(listed.lines().count(), names.len() + 1, "{listed}");
    for n in std::iter::once("imet".to_string()).chain(names.iter().map(|n| format!("imet-{n}"))) {
        let path = dir.path().join(format!("{n}.1"));
        assert!(path.exists(), "no {}", path.display());
        let out = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(&path).output().expect("groff runs");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && warnings.trim().is_empty(), "groff on {n}.1: {warnings}");
    }
    let text = Command::new("groff").args(["-man", "-Tutf8"]).arg(dir.path().join("imet-report.1")).output().unwrap();
    // grotty marks bold by overstriking (`X\bX`): keep the last of each pair.
    let mut plain = String::new();
    for c in String::from_utf8_lossy(&text.stdout).chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    let text = plain;
    assert!(text.contains("IMET-REPORT(1)") && text.contains("--spec") && text.contains("--json"), "{text}");
}

#[test]
fn help_lists_the_environment_the_program_reads() {
    let help = imet(&["--help"]);
    for var in ["IMET_ROOT", "IMET_DEVICE", "IMET_LOG_FORMAT", "RUST_LOG", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL", "SLURM_ARRAY_TASK_ID", "OMP_NUM_THREADS"] {
        assert!(help.contains(var), "`imet --help` does not mention {var}:\n{help}");
    }
}

#[test]
fn every_option_of_every_subcommand_has_help_text() {
    // `--help` prints a description after each option; an undocumented
    // one is a line with the flag and nothing after it.
    for cmd in subcommands() {
        let help = imet(&[&cmd, "--help"]);
        let options = help.split("Options:").nth(1).unwrap_or("");
        let lines: Vec<&str> = options.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            // Option lines start with `-`; possible values (`- slurm: ...`) with `- `.
            if !(t.starts_with('-') && !t.starts_with("- ") && l.starts_with("  ")) {
                continue;
            }
            let has_text = t.split("  ").filter(|s| !s.trim().is_empty()).count() > 1
                || lines.get(i + 1).is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            assert!(has_text, "`imet {cmd} --help`: `{}` has no description", t);
        }
    }
}
