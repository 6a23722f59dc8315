//! The code's layout is a promise too: no plane imports another, the proving tools stay out of
//! the planes, subjects are built in one place, and `anyhow` stays at the edges. These read
//! the source tree, so a change that breaks the layout fails here with the file and line.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Lines under `src/<folder>` (a folder or a file stem) containing `needle`, outside unit
/// tests (`#[cfg(test)]` and below).
fn offending(folder: &str, needle: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let root = src.join(folder);
    let files = if root.is_dir() {
        rust_files(&root)
    } else {
        vec![src.join(format!("{folder}.rs"))]
    };
    let mut hits = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            if line.contains(needle) && !line.trim_start().starts_with("//") {
                hits.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    hits
}

#[test]
fn no_plane_imports_another_plane() {
    let mut hits = offending("hands", "crate::brain");
    hits.extend(offending("brain", "crate::hands"));
    // The layers below the planes: event <- bus <- session.
    for (lower, uppers) in [
        ("event", &["crate::bus", "crate::session"][..]),
        ("bus", &["crate::session"][..]),
    ] {
        for upper in uppers {
            hits.extend(offending(lower, upper));
        }
    }
    for lower in ["event", "session", "bus"] {
        for upper in [
            "crate::brain",
            "crate::hands",
            "crate::api",
            "crate::credentials",
        ] {
            hits.extend(offending(lower, upper));
        }
    }
    assert!(
        hits.is_empty(),
        "imports across planes:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_proving_tools_stay_out_of_the_product() {
    let mut hits = Vec::new();
    for folder in [
        "event",
        "session",
        "bus",
        "api",
        "brain",
        "hands",
        "credentials",
        "config",
        "tasks",
        "tls",
    ] {
        hits.extend(offending(folder, "crate::lab"));
        hits.extend(offending(folder, "anyhow"));
    }
    assert!(
        hits.is_empty(),
        "lab or anyhow in the product:\n{}",
        hits.join("\n")
    );
}

#[test]
fn subjects_are_built_in_one_place() {
    let mut hits = Vec::new();
    for folder in [
        "event",
        "session",
        "api",
        "brain",
        "hands",
        "credentials",
        "lab",
    ] {
        for literal in [
            "\"herd.tools.",
            "\"herd.wake.",
            "\"herd.deadletter.",
            "\"herd.session.",
        ] {
            hits.extend(offending(folder, literal));
        }
    }
    for f in ["wake", "jobs", "routing", "work_queue", "streams"] {
        for literal in ["\"herd.tools.", "\"herd.wake.", "\"herd.deadletter."] {
            hits.extend(offending(&format!("bus/{f}"), literal));
        }
    }
    assert!(
        hits.is_empty(),
        "subjects built outside bus/subjects.rs:\n{}",
        hits.join("\n")
    );
}
