//! The library's layers import downwards only:
//! `cli` → `ops` → (`node`, `keyring`, `payload`, `ha`, `pg`) → (`bundle`,
//! `audit`) → (`fsutil`, `secret`, `fmt`, `kdf`, `aead`, `actor`,
//! `failpoint`). `error` maps every layer's error to an exit code, so it
//! may name any of them and any may use it. Within the middle layer,
//! `node` (the home and its journaled change) knows nothing of the pair:
//! it imports neither `ha` nor `pg`, whose effects reach it through
//! `node::Effects`.
//!
//! Reads every file under `src/` and fails naming the file and the import
//! that climbs.

use std::fs;
use std::path::{Path, PathBuf};

fn rank(module: &str) -> Option<u8> {
    Some(match module {
        "fsutil" | "secret" | "fmt" | "kdf" | "aead" | "actor" | "failpoint" => 0,
        "bundle" | "audit" => 1,
        "node" | "keyring" | "payload" | "ha" | "pg" => 2,
        "ops" => 3,
        "cli" => 4,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::NAME` a file names outside comments.
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn no_module_imports_upwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut climbs = Vec::new();
    for file in &files {
        let from = module_of(&src, file);
        let Some(from_rank) = rank(&from) else {
            continue; // lib.rs, main.rs, error.rs
        };
        let text = fs::read_to_string(file).unwrap();
        for to in imports(&text) {
            let Some(to_rank) = rank(&to) else { continue };
            let node_knows_the_pair = from == "node" && matches!(to.as_str(), "ha" | "pg" | "ops");
            if to_rank > from_rank || node_knows_the_pair {
                climbs.push(format!(
                    "{} ({from}) imports crate::{to}",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(
        climbs.is_empty(),
        "imports that climb:\n{}",
        climbs.join("\n")
    );
}

#[test]
fn the_check_sees_a_climb() {
    assert_eq!(
        imports("use crate::ha::service::Server; // crate::ops in a comment"),
        vec!["ha".to_owned()]
    );
    assert!(rank("node") < rank("ops"));
}
