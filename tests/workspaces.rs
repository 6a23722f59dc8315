//! Workspaces are bounded and collected (rule 11): a session over its workspace quota gets a
//! clear tool error and can clean up with bash; `herd gc` removes the volumes of sessions that
//! are gone or idle, and keeps the rest.

mod common;

use std::time::Duration;

use common::*;
use herd::event::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_over_its_quota_refuses_writes_until_bash_cleans_it_up() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let brain = start_brain(&t, "ws-brain").await;
    let hand_host = host("ws");
    let (hands, sandboxes) = start_hands_with(
        &t,
        herd::hands::HandsConfig {
            workspace_quota: 1 << 20,
            workspace_check_every: Duration::ZERO,
            ..hands_config(&hand_host, "herd-sandbox:busybox")
        },
    )
    .await;
    let script = vec![
        tool_turn(
            "toolu_fill",
            "bash",
            json!({"command": "(while :; do head -c 10000 /dev/zero >> grow; sleep 0.1; done) >/dev/null 2>&1 & head -c 2000000 /dev/zero > big && echo filled"}),
        ),
        tool_turn(
            "toolu_write",
            "write",
            json!({"path": "note.txt", "content": "hello"}),
        ),
        tool_turn(
            "toolu_clean",
            "bash",
            json!({"command": "rm big; a=$(wc -c < grow); sleep 1; b=$(wc -c < grow); rm grow; echo \"grow $a $b\"; echo cleaned"}),
        ),
        tool_turn(
            "toolu_again",
            "write",
            json!({"path": "note.txt", "content": "hello"}),
        ),
        text_turn("done"),
    ];
    let id = scripted_session(
        &t,
        &["bash", "write"],
        script,
        Some("herd-sandbox:busybox"),
        "fill the disk",
    )
    .await;
    let events = wait_idles(&t, &id, 1).await;
    let (err, fill) = tool_result(&events, "toolu_fill");
    assert!(err, "{fill}");
    assert!(
        fill.contains("filled")
            && fill.contains("The workspace holds 2 MiB, over this deployment's quota of 1 MiB"),
        "{fill}"
    );
    let (err, write) = tool_result(&events, "toolu_write");
    assert!(
        err && write.contains("write is refused until it is back under"),
        "{write}"
    );
    let (err, clean) = tool_result(&events, "toolu_clean");
    assert!(!err && clean.contains("cleaned"), "{clean}");
    // The background writer was stopped with the sandbox: the file no longer grows.
    let grow: Vec<&str> = clean
        .lines()
        .find(|l| l.starts_with("grow "))
        .unwrap_or_default()
        .split(' ')
        .collect();
    assert!(grow.len() == 3 && grow[1] == grow[2], "{clean}");
    let (err, again) = tool_result(&events, "toolu_again");
    assert!(!err && again.contains("wrote 5 bytes"), "{again}");
    let report = t.log.check(&id, true).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);

    // herd gc: this session's volume is in use (its sandbox runs) and stays; once its sandbox
    // is gone and it has been idle past --idle-days 0, it goes. A volume of a session the log
    // does not know goes too.
    let stray = format!("herd-ws-{hand_host}-{}", SessionId::generate());
    let made = std::process::Command::new("docker")
        .args(["volume", "create", &stray])
        .output()
        .unwrap();
    assert!(made.status.success());
    let gc = |dry: bool| {
        let mut args = vec!["gc", "--host", &hand_host, "--idle-days", "0"];
        if dry {
            args.push("--dry-run");
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(&args)
            .envs(herd_env(&t.server))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = gc(false);
    let own = format!("herd-ws-{hand_host}-{id}");
    assert!(
        first.contains(&format!("removed {stray}: its session is not in the log")),
        "{first}"
    );
    assert!(!first.contains(&own), "a volume in use is kept: {first}");
    sandboxes.remove_sandbox(&id).await;
    let dry = gc(true);
    assert!(
        dry.contains(&format!("would remove {own}: its session has been idle")),
        "{dry}"
    );
    let second = gc(false);
    assert!(second.contains(&format!("removed {own}")), "{second}");
    let left = std::process::Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=herd-ws-{hand_host}-"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
    brain.abort();
    hands.abort();
}

/// herd's sandboxes of one hand host, running or not.
fn containers_of(host: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=herd.host={host}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_at_its_sandbox_limit_makes_room_by_removing_the_least_recently_used() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let brain = start_brain(&t, "room-brain").await;
    let hand_host = host("room");
    let (hands, sandboxes) = start_hands_with(
        &t,
        herd::hands::HandsConfig {
            max_sandboxes: 1,
            ..hands_config(&hand_host, "herd-sandbox:busybox")
        },
    )
    .await;
    let first = scripted_session(
        &t,
        &["bash"],
        vec![
            tool_turn(
                "toolu_a",
                "bash",
                json!({"command": "echo kept > a.txt; echo one"}),
            ),
            text_turn("ok"),
            tool_turn("toolu_a2", "bash", json!({"command": "cat a.txt"})),
            text_turn("ok"),
        ],
        Some("herd-sandbox:busybox"),
        "first",
    )
    .await;
    wait_idles(&t, &first, 1).await;
    assert_eq!(containers_of(&hand_host), 1);
    let second = scripted_session(
        &t,
        &["bash"],
        vec![
            tool_turn("toolu_b", "bash", json!({"command": "echo two"})),
            text_turn("ok"),
        ],
        Some("herd-sandbox:busybox"),
        "second",
    )
    .await;
    let events = wait_idles(&t, &second, 1).await;
    let (err, out) = tool_result(&events, "toolu_b");
    assert!(!err && out.contains("two"), "{out}");
    assert_eq!(containers_of(&hand_host), 1, "the first sandbox made room");
    // The first session comes back to a fresh sandbox with its files.
    send(&t, &first, "again").await;
    let events = wait_idles(&t, &first, 2).await;
    let (err, out) = tool_result(&events, "toolu_a2");
    assert!(!err && out.contains("kept"), "{out}");
    assert_eq!(containers_of(&hand_host), 1);
    brain.abort();
    hands.abort();
    sandboxes.destroy(&first).await;
    sandboxes.destroy(&second).await;
}
