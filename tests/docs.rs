//! The documents are part of the product (issue 12, item 19): README.md,
//! SECURITY.md and docs/ link only to files inside the repository, and the
//! format specification states the numbers the code uses.

use std::fs;
use std::path::{Component, Path};

/// Markdown link targets `](target)` in `text`, without their `#anchor`.
fn link_targets(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|target| target.split('#').next().unwrap_or(""))
        .collect()
}

#[test]
fn documents_link_only_to_files_inside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = vec![root.join("README.md"), root.join("SECURITY.md")];
    for entry in fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    for doc in documents {
        let text = fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap();
        for target in link_targets(&text) {
            if target.is_empty() {
                continue; // a link to an anchor of the same page
            }
            assert!(
                !target.contains("://"),
                "{}: {target} is outside the repository",
                doc.display()
            );
            let resolved = dir.join(target);
            // Resolve `..` by hand: the target must stay under the root.
            let mut depth: isize = dir.strip_prefix(root).unwrap().components().count() as isize;
            for c in Path::new(target).components() {
                match c {
                    Component::ParentDir => depth -= 1,
                    Component::Normal(_) => depth += 1,
                    _ => {}
                }
                assert!(
                    depth >= 0,
                    "{}: {target} leaves the repository",
                    doc.display()
                );
            }
            assert!(
                resolved.exists(),
                "{}: {target} does not exist",
                doc.display()
            );
        }
    }
}

/// `n` as the specification writes it: digits grouped by commas from
/// 1,000 up.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    if n < 1_000 {
        return digits;
    }
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn the_format_specification_states_the_numbers_of_the_code() {
    use keyferry::bundle::{armor, header, CHUNK_SIZE};
    use keyferry::kdf::{self, KdfParams};
    use keyferry::{payload, secret};

    let spec =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/format.md")).unwrap();
    let must_say = |what: &str, text: String| {
        assert!(
            spec.contains(&text),
            "docs/format.md does not say {text:?} ({what})"
        );
    };
    let number = |what: &str, n: u64| must_say(what, grouped(n));

    must_say("magic", String::from_utf8(header::MAGIC.to_vec()).unwrap());
    number("header length", header::HEADER_LEN as u64);
    must_say(
        "committed bytes",
        format!("bytes 0..{}", header::COMMITTED_LEN),
    );
    must_say(
        "wrap associated data",
        format!("bytes 0..{}", header::WRAP_AAD_LEN),
    );
    number("chunk size", CHUNK_SIZE as u64);
    number(
        "sealed chunk size",
        keyferry::bundle::stream::SEALED_CHUNK_SIZE as u64,
    );
    let d = KdfParams::DEFAULT;
    number("default memory", d.memory_kib.into());
    must_say(
        "default parameters",
        format!("| {} | {} |", d.time, d.lanes),
    );
    number("export floor memory", kdf::MIN_EXPORT_MEMORY_KIB.into());
    must_say(
        "export floor time",
        format!(
            "{} KiB | {} |",
            grouped(kdf::MIN_EXPORT_MEMORY_KIB.into()),
            kdf::MIN_EXPORT_TIME
        ),
    );
    number("import memory limit", kdf::MAX_IMPORT_MEMORY_KIB.into());
    must_say("import time limit", format!("t ≤ {}", kdf::MAX_IMPORT_TIME));
    must_say(
        "import lane limit",
        format!("p ≤ {}", kdf::MAX_IMPORT_LANES),
    );
    must_say(
        "password alphabet",
        String::from_utf8(secret::ALPHABET.to_vec()).unwrap(),
    );
    must_say(
        "generated length",
        format!("exactly {} characters", secret::GENERATED_LEN),
    );
    must_say(
        "chosen minimum",
        format!("at least {} characters", secret::MIN_CHOSEN_LEN),
    );
    number("password source limit", secret::MAX_PASSWORD_LEN as u64);
    must_say(
        "source_node limit",
        format!("at most {} characters", payload::MAX_SOURCE_NODE),
    );
    number("payload cap", payload::DEFAULT_MAX_TOTAL);
    must_say(
        "zip entries",
        format!("At most {} entries", payload::zip::MAX_ENTRIES),
    );
    must_say("armor BEGIN line", armor::BEGIN.to_owned());
    must_say("armor END line", armor::END.to_owned());
    must_say(
        "armor line length",
        format!("{} characters a line", armor::LINE_CHARS),
    );
    must_say(
        "armor longest line",
        format!("longer than {} bytes", armor::MAX_LINE),
    );
}

#[test]
fn the_readme_exit_code_table_lists_every_exit_code_of_the_code() {
    use keyferry::error::exit;

    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let codes = [
        ("OK", exit::OK),
        ("FAILURE", exit::FAILURE),
        ("USAGE", exit::USAGE),
        ("WRONG_PASSWORD", exit::WRONG_PASSWORD),
        ("BAD_BUNDLE", exit::BAD_BUNDLE),
        ("EXPIRED", exit::EXPIRED),
        ("KDF_LIMIT", exit::KDF_LIMIT),
        ("AUDIT", exit::AUDIT),
        ("PREFLIGHT", exit::PREFLIGHT),
        ("DEGRADED", exit::DEGRADED),
        ("DOWN", exit::DOWN),
        ("UNDECRYPTABLE", exit::UNDECRYPTABLE),
        ("IN_USE", exit::IN_USE),
        ("FENCED", exit::FENCED),
    ];
    for (name, code) in codes {
        assert!(
            readme.contains(&format!("\n| {code} | ")),
            "README.md's exit-code table has no row for {code} ({name})"
        );
    }
    assert!(readme.contains("exit 0 healthy, 9 degraded, 10 down"));
    assert_eq!((exit::DEGRADED, exit::DOWN), (9, 10));
}
