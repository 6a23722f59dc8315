//! The set-up scripts' progress lines (`scripts/lib/progress`, used by `scripts/demo` and
//! `scripts/test`): a slow step prints one line and its time; a step that fails prints its
//! log's path and tail and fails the script.

use std::process::Command;

fn run(steps: &str, logs: &std::path::Path) -> std::process::Output {
    Command::new("bash")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; source scripts/lib/progress; progress_logs={}; {steps}",
            logs.display()
        ))
        .output()
        .unwrap()
}

#[test]
fn a_step_prints_one_line_and_a_failing_one_its_log() {
    let logs = std::env::temp_dir().join(format!("herd-progress-{}", std::process::id()));
    let ok = run(
        r#"quietly "a quiet step" quiet bash -c 'for i in $(seq 400); do echo "noise $i"; done'; progress_total "set-up done""#,
        &logs,
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}");
    assert_eq!(
        out.lines().count(),
        2,
        "one line per step and the total: {out}"
    );
    assert!(out.starts_with("a quiet step… done in ") && out.contains("set-up done in "));
    assert!(!out.contains("noise"), "the step's output went to its log");
    let log = std::fs::read_to_string(logs.join("quiet.log")).unwrap();
    assert_eq!(log.lines().count(), 400);

    // An image build made to fail (an image the script does not know): the script stops with
    // the step's status, naming the log and showing its end.
    let failed = run(
        r#"quietly "building a sandbox image" image-build sandbox-images/build no-such-image; echo never"#,
        &logs,
    );
    let out = String::from_utf8_lossy(&failed.stdout);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(2), "{out}{err}");
    assert!(out.contains("building a sandbox image… FAILED after") && !out.contains("never"));
    let path = logs.join("image-build.log");
    assert!(
        err.contains(&format!("The step's log is {}", path.display())),
        "{err}"
    );
    assert!(err.contains("  | usage: sandbox-images/build"), "{err}");
    let _ = std::fs::remove_dir_all(&logs);
}
