//! The `herd` binary against a real nats-server: what a person at a terminal sees.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;
use herd::event::Event;

struct Herd {
    env: Vec<(&'static str, String)>,
}

impl Herd {
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, b"")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("HERD_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "herd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str], code: i32, want: &str) {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "herd {args:?}: {err}");
        assert!(err.contains(want), "herd {args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_the_command_line() {
    let t = TestNats::start().await;
    let herd = Herd {
        env: herd_env(&t.server),
    };
    let applied = herd.ok(&["streams", "apply"]);
    assert!(
        applied.contains("HERD_SESSIONS") && applied.contains("Unchanged"),
        "{applied}"
    );
    // Every bound in one view: the work queues and the blob store are bounded, the log is not.
    let status = herd.ok(&["status"]);
    let line = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_string()
    };
    assert!(line("HERD_WAKE ").contains("256.0 MiB"), "{status}");
    assert!(line("HERD_TOOLS ").contains("1024.0 MiB"), "{status}");
    assert!(line("OBJ_herd-blobs").contains("10240.0 MiB"), "{status}");
    assert!(line("HERD_SESSIONS").contains("none"), "{status}");
    let json: serde_json::Value = serde_json::from_str(&herd.ok(&["status", "--json"])).unwrap();
    assert!(json["streams"].as_array().unwrap().len() >= 9);

    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.json");
    std::fs::write(
        &agent,
        r#"{"model": "from-file", "system": "be brief", "tools": [{"name": "bash", "permission_policy": "always_ask"}]}"#,
    )
    .unwrap();
    let id = herd.ok(&[
        "session",
        "create",
        "--id",
        "cli-1",
        "--agent",
        agent.to_str().unwrap(),
        "--title",
        "from the cli",
        "--metadata",
        "team=infra",
    ]);
    assert_eq!(id.trim(), "cli-1");
    let sent = herd.ok(&[
        "session",
        "send",
        "cli-1",
        "hello there",
        "--event-id",
        "msg-1",
    ]);
    assert!(sent.starts_with("msg-1 at sequence 2"), "{sent}");
    let again = herd.ok(&[
        "session",
        "send",
        "cli-1",
        "hello there",
        "--event-id",
        "msg-1",
    ]);
    assert!(again.contains("(already there)"), "{again}");

    let events = herd.ok(&["session", "events", "cli-1"]);
    let lines: Vec<&str> = events.lines().collect();
    assert_eq!(lines.len(), 2, "{events}");
    assert!(lines[0].contains("session.created") && lines[0].contains("model=from-file"));
    assert!(lines[1].contains("user.message") && lines[1].contains("hello there"));

    let json = herd.ok(&[
        "session",
        "events",
        "cli-1",
        "--json",
        "--type",
        "user.message",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["seq"], 2);
    assert_eq!(v["event"]["id"], "msg-1");
    assert_eq!(v["event"]["content"][0]["text"], "hello there");

    let shown: serde_json::Value =
        serde_json::from_str(&herd.ok(&["session", "show", "cli-1", "--json"])).unwrap();
    assert_eq!(shown["status"], "idle");
    assert_eq!(shown["event_count"], 2);
    assert_eq!(shown["config"]["agent"]["model"], "from-file");
    assert_eq!(
        shown["config"]["agent"]["tools"][0]["permission_policy"],
        "always_ask"
    );
    let text = herd.ok(&["session", "show", "cli-1"]);
    assert!(
        text.contains("title        from the cli") && text.contains("team=infra"),
        "{text}"
    );

    let generated = herd.ok(&["session", "create"]);
    let list = herd.ok(&["session", "list"]);
    assert!(
        list.contains("cli-1  2 events") && list.contains(generated.trim()),
        "{list}"
    );

    // `herd decode` turns a stored payload into JSON, for `nats … --translate 'herd decode'`.
    let e = user("decode me");
    let out = herd.run_with_stdin(&["decode"], &e.encode());
    assert!(out.status.success());
    let decoded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decoded["type"], "user.message");
    assert_eq!(decoded["content"][0]["text"], "decode me");
    assert_eq!(Event::from_json(decoded).unwrap().id, e.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_get_clear_errors() {
    let t = TestNats::start().await;
    let herd = Herd {
        env: herd_env(&t.server),
    };
    herd.ok(&["session", "create", "--id", "s1"]);
    herd.fails(
        &["session", "create", "--id", "s1"],
        1,
        "session s1 already exists",
    );
    herd.fails(&["session", "create", "--id", "a.b"], 1, "contains '.'");
    herd.fails(
        &["hands", "--mcp-call-timeout-secs", "0"],
        2,
        "--mcp-call-timeout-secs",
    );
    // The warm pool's flag: a count that is not one, and more than a hand may keep.
    herd.fails(
        &["hands", "--warm-pool", "many"],
        1,
        "expected N or IMAGE=N",
    );
    herd.fails(
        &["hands", "--warm-pool", "herd-sandbox:busybox=65"],
        1,
        "a hand keeps at most 64",
    );
    herd.fails(
        &["hands", "--warm-pool", "some-other-image:latest=1"],
        1,
        "is not one sessions may use",
    );
    // Counts that would wrap a sum round, and one image named twice.
    herd.fails(
        &[
            "hands",
            "--warm-pool",
            "18446744073709551615",
            "--warm-pool",
            "herd-sandbox:busybox=2",
        ],
        1,
        "a hand keeps at most 64",
    );
    herd.fails(
        &[
            "hands",
            "--warm-pool",
            "herd-sandbox:busybox=1",
            "--warm-pool",
            "herd-sandbox:busybox=2",
        ],
        1,
        "names the image \"herd-sandbox:busybox\" twice",
    );
    herd.fails(
        &["hands", "--snapshot-limit-mib", "0"],
        2,
        "--snapshot-limit-mib",
    );
    // Forks and schedules from the command line, refused with what is wrong.
    herd.fails(
        &["session", "fork", "s1", "--at", "0"],
        1,
        "its log holds sequences 1 to",
    );
    herd.fails(&["session", "fork", "nope"], 1, "nope");
    herd.fails(
        &["session", "fork", "nope"],
        1,
        "session nope does not exist",
    );
    herd.fails(
        &[
            "session", "schedule", "s1", "n", "--when", "every 5s", "--prompt", "p",
        ],
        1,
        "shortest interval is 60 s",
    );
    herd.fails(
        &["session", "unschedule", "s1", "nothing"],
        1,
        "no scheduled wake named",
    );
    herd.fails(&["session", "snapshot", "s1"], 1, "has never had a sandbox");
    herd.fails(
        &["session", "create", "--tool", "get_event"],
        1,
        "is not a built-in tool",
    );
    herd.fails(
        &["session", "send", "nope", "hi"],
        1,
        "session nope does not exist",
    );
    herd.fails(&["session", "send", "s1", "  "], 1, "the message is empty");
    herd.fails(
        &["session", "send", "s1", "x", "--event-id", "a b"],
        1,
        "event id",
    );
    herd.fails(&["session", "events", "nope"], 1, "does not exist");
    herd.fails(
        &["session", "events", "s1", "--type", "NOPE"],
        1,
        "not valid",
    );
    herd.fails(&["session", "show", "nope"], 1, "does not exist");
    herd.fails(
        &["session", "create", "--repo", "ssh://git@h/x.git"],
        1,
        "must be http(s)",
    );
    herd.fails(
        &["session", "create", "--repo", "https://h/x.git,path=../up"],
        1,
        "invalid mount path",
    );
    herd.fails(
        &["session", "create", "--repo", "https://h/x.git,branch=a;rm"],
        1,
        "invalid branch name",
    );
    herd.fails(
        &["session", "create", "--repo", "https://h/x.git,token=abc"],
        1,
        "unknown part",
    );
    herd.fails(
        &["session", "create", "--repo", "https://h/x.git,push=a*b"],
        1,
        "push_branches entry \"a*b\": invalid branch name",
    );
    herd.fails(
        &["session", "create", "--repo", "https://h/x.git,push=-f*"],
        1,
        "push_branches entry \"-f*\"",
    );
    // The hands' new flags: a bad range or runtime stops the hand with a clear error.
    herd.fails(
        &["hands", "--allow-private-range", "10.0.0.0/33"],
        2,
        "invalid address range \"10.0.0.0/33\"",
    );
    herd.fails(
        &["hands", "--allow-private-range", "localhost"],
        2,
        "expected an address or address/prefix",
    );
    herd.fails(
        &["hands", "--runtime", "no-such-runtime"],
        1,
        "the sandbox runtime \"no-such-runtime\" is not registered with this Docker engine",
    );
    herd.fails(&["hands", "--max-sandboxes", "many"], 2, "--max-sandboxes");
    herd.fails(&["gc", "--idle-days", "soon"], 2, "--idle-days");
    herd.fails(
        &["brain", "--max-session-mib", "1.5"],
        2,
        "--max-session-mib",
    );
    herd.fails(&["session", "create", "--vault", "a.b"], 1, "vault name");
    herd.fails(
        &["session", "create", "--limit", "tool_calls"],
        1,
        "is not NAME=N",
    );
    herd.fails(
        &["session", "create", "--limit", "loops=3"],
        1,
        "unknown limit \"loops\"",
    );
    herd.fails(
        &["session", "create", "--limit", "tool_calls=0"],
        1,
        "at least 1",
    );
    herd.fails(
        &["session", "create", "--limit", "tool_calls=-2"],
        1,
        "not a whole number",
    );
    herd.fails(
        &["session", "update", "s1", "--limit", "loops=3"],
        1,
        "unknown limit",
    );
    herd.fails(
        &["session", "update", "nope", "--limit", "tool_calls=3"],
        1,
        "does not exist",
    );
    herd.fails(&["session", "update", "s1"], 2, "--limit");
    herd.fails(
        &["session", "create", "--budget-usd-cents", "1.5"],
        1,
        "max_list_cost.amount \"1.5\" is not a whole number of US cents",
    );
    herd.fails(
        &[
            "session",
            "create",
            "--model",
            "gpt-4o",
            "--budget-usd-cents",
            "100",
        ],
        1,
        "model_not_budgetable",
    );
    herd.fails(
        &["session", "update", "s1", "--budget-usd-cents", "100"],
        1,
        "budget_create_only",
    );
    herd.fails(
        &[
            "session",
            "update",
            "s1",
            "--budget-usd-cents",
            "5",
            "--no-budget",
        ],
        2,
        "cannot be used with",
    );
    // A budget on the default model (priced), shown, raised and removed.
    herd.ok(&[
        "session",
        "create",
        "--id",
        "b1",
        "--budget-usd-cents",
        "250",
    ]);
    let shown = herd.ok(&["session", "show", "b1"]);
    assert!(shown.contains("budget       $2.50"), "{shown}");
    assert!(shown.contains("list cost    $0.00"), "{shown}");
    herd.fails(
        &["session", "update", "b1", "--budget-usd-cents", "x"],
        1,
        "not a whole number of US cents",
    );
    herd.ok(&["session", "update", "b1", "--budget-usd-cents", "300"]);
    assert!(
        herd.ok(&["session", "show", "b1"])
            .contains("budget       $3.00")
    );
    herd.ok(&[
        "session",
        "update",
        "b1",
        "--limit",
        "wall_seconds_per_turn=30",
    ]);
    let shown = herd.ok(&["session", "show", "b1"]);
    assert!(
        shown.contains("budget       $3.00"),
        "a limit update keeps the budget: {shown}"
    );
    assert!(shown.contains("wall_seconds_per_turn=30"), "{shown}");
    herd.ok(&["session", "update", "b1", "--no-budget"]);
    assert!(!herd.ok(&["session", "show", "b1"]).contains("budget "));
    herd.fails(&["auth", "rotate", "root"], 1, "unknown role \"root\"");
    herd.fails(
        &["session", "create", "--allow-host", "https://x.com"],
        1,
        "invalid host",
    );
    let repo = herd.ok(&[
        "session",
        "create",
        "--tool",
        "git_remote",
        "--vault",
        "dev",
        "--repo",
        "https://git.example.com/o/app.git,credential=GIT,branch=main",
    ]);
    let shown = herd.ok(&["session", "show", repo.trim(), "--json"]);
    assert!(
        shown.contains("git.example.com/o/app.git") && shown.contains("\"dev\""),
        "{shown}"
    );
    // Answers to calls the session never made are refused (herd check would flag them).
    herd.fails(
        &["session", "tool-result", "s1", "toolu_nope", "made up"],
        1,
        "has no custom tool call toolu_nope waiting for a result",
    );
    herd.fails(
        &["session", "confirm", "s1", "toolu_nope", "allow"],
        1,
        "has no call toolu_nope waiting for a confirmation",
    );
    herd.fails(
        &["session", "create", "--metadata", "novalue"],
        1,
        "not KEY=VALUE",
    );
    herd.fails(
        &["session", "events", "s1", "--last", "2", "--limit", "3"],
        2,
        "cannot be used with",
    );
    herd.fails(&["no-such-command"], 2, "unrecognized subcommand");

    let out = herd.run_with_stdin(&["decode"], b"\xc1 not msgpack");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid MessagePack"));

    // A bad config file names the key, never a secret's value.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("herd.toml");
    std::fs::write(
        &cfg,
        "[nats]\nurl = 'nats://127.0.0.1:1'\npasword = 'canary-secret-value'\n",
    )
    .unwrap();
    let out = herd.run(&["--config", cfg.to_str().unwrap(), "session", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("pasword") && !err.contains("canary-secret-value"),
        "{err}"
    );

    // Nothing listening: a clear error, not a hang.
    let nobody = Herd {
        env: vec![("HERD_NATS_URL", "nats://127.0.0.1:1".into())],
    };
    nobody_fails(&nobody);
}

fn nobody_fails(herd: &Herd) {
    let out = herd.run(&["session", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_benchmark_runs_and_reports() {
    // A miniature run: checks the benchmark works end to end, not how fast anything is.
    let report = herd::lab::bench::log::run(herd::lab::bench::log::Params {
        appends: 20,
        session_events: 300,
        background: 3_000,
        replays: 2,
    })
    .await
    .unwrap();
    assert_eq!(report.append_step_1.n, 20);
    assert_eq!(report.raw_publish.n, 20);
    assert_eq!(report.replay_herd.n, 2);
    assert!(report.stream_messages >= 3_300);
    assert!(report.replay_ratio > 0.0 && report.append_p50_ratio > 0.0);
    let table = report.table();
    assert!(table.contains("ratio herd / raw"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brain_benchmark_runs_and_reports() {
    // A miniature run: checks the benchmark works end to end, not how fast anything is.
    let report = herd::lab::bench::brain::run(herd::lab::bench::brain::Params {
        sessions_per_size: 2,
        sizes: vec![10, 100],
        throughput_sessions: 5,
    })
    .await
    .unwrap();
    assert_eq!(report.sizes.len(), 2);
    assert_eq!(report.sizes[1].warm.n, 2);
    assert!(report.sizes[1].events >= 90);
    assert!(report.wakes_per_sec > 0.0 && report.raw.n > 0);
    assert!(report.table().contains("wakes/s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_benchmark_runs_and_reports() {
    // A miniature run: checks the benchmark works end to end, not how fast anything is.
    let report = herd::lab::bench::gateway::run(herd::lab::bench::gateway::Params {
        samples: 3,
        list_events: 20,
        streams: 4,
    })
    .await
    .unwrap();
    assert_eq!((report.sse.n, report.raw_follow.n), (3, 3));
    assert_eq!((report.send.n, report.raw_wake.n), (3, 3));
    assert_eq!(
        report.fanout.n,
        5 * 4,
        "five appends to each of four streams"
    );
    assert!(report.list_http.n > 0 && report.sse_p50_ratio > 0.0);
    assert!(report.table().contains("streams"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_benchmark_runs_and_reports() {
    // A miniature run: checks the benchmark works end to end, not how fast anything is.
    let report = herd::lab::bench::tools::run(herd::lab::bench::tools::Params {
        samples: 3,
        session_events: 300,
        slice: 50,
        python: concat!(env!("CARGO_MANIFEST_DIR"), "/.herd/sdk-venv/bin/python").into(),
        server_script: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/server.py").into(),
    })
    .await
    .unwrap();
    assert_eq!((report.get_events.n, report.raw_read.n), (3, 3));
    let mcp = report.mcp.as_ref().expect("the MCP part ran");
    assert_eq!(
        (mcp.round_trip.n, mcp.client.n, mcp.direct_http.n),
        (3, 3, 3)
    );
    assert!(report.get_events_p50_ratio > 0.0 && mcp.client_p50_ratio > 0.0);
    assert!(report.table().contains("MCP call"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_benchmark_runs_and_reports() {
    // A miniature run in headless Chromium: checks the benchmark works end to end, not how
    // fast anything is.
    let report = herd::lab::bench::console::run(herd::lab::bench::console::Params {
        events: 700,
        samples: 3,
        repeats: 1,
        python: concat!(env!("CARGO_MANIFEST_DIR"), "/.herd/sdk-venv/bin/python").into(),
        driver: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/bench.py").into(),
    })
    .await
    .unwrap();
    // Past the 600 cards kept at once: the bench also checks the earlier ones draw in order.
    assert_eq!(report.params.events, 700);
    assert_eq!(
        (
            report.first_paint.n,
            report.raw_replay.n,
            report.append_to_page.n,
            report.append_to_sse.n
        ),
        (1, 1, 3, 3)
    );
    assert!(
        report.first_paint.p50_us >= report.first_events.p50_us && report.first_events.p50_us > 0.0
    );
    assert!(report.append_p50_ratio > 0.0 && report.asset_bytes > 10_000);
    assert!(report.table().contains("first paint"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hands_benchmark_runs_and_reports() {
    // A miniature run: checks the benchmark works end to end, not how fast anything is.
    let status =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox-images/build"))
            .arg("busybox")
            .status()
            .unwrap();
    assert!(status.success());
    let report = herd::lab::bench::hands::run(herd::lab::bench::hands::Params {
        provisions: 2,
        round_trips: 3,
        image: "herd-sandbox:busybox".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        (
            report.provision_herd.n,
            report.round_trip.n,
            report.exec_bare.n
        ),
        (2, 3, 3)
    );
    assert!(report.table().contains("overhead"));
}

/// `herd up` stops cleanly on SIGTERM (what `docker stop` and systemd send) and says what it
/// leaves behind; `herd down` removes a host's sandboxes and workspace volumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_up_stops_on_sigterm_and_herd_down_removes_what_is_left() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let mut up = Command::new(env!("CARGO_BIN_EXE_herd"))
        .envs(herd_env(&t.server))
        .args([
            "up",
            "--no-gateway",
            "--sandbox-image",
            "herd-sandbox:busybox",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = up.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("running (Ctrl-C or SIGTERM to stop)"))
    {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("herd up never said it runs: {seen:?}"));
        seen.push(line);
    }
    let status = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = up.wait().unwrap();
    seen.extend(rx.try_iter());
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
        seen.push(line);
    }
    let text = seen.join("\n");
    assert!(exit.success(), "herd up on SIGTERM: {exit:?}\n{text}");
    assert!(text.contains("herd up: stopping (SIGTERM)"), "{text}");
    assert!(
        text.contains("left on Docker:") && text.contains("herd down"),
        "{text}"
    );

    // A sandbox and its workspace volume on a host of this test's own.
    let host = host("down-");
    let sandboxes = herd::hands::sandbox::Sandboxes::connect(
        &host,
        herd::hands::sandbox::SandboxConfig {
            default_image: "herd-sandbox:busybox".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let session = herd::event::SessionId::parse("sesn_downtest").unwrap();
    sandboxes
        .ensure(&session, Some("herd-sandbox:busybox"))
        .await
        .unwrap();
    assert_eq!(sandboxes.managed_containers(false).await.unwrap().len(), 1);
    let down = |extra: &[&str]| {
        let mut args = vec!["down", "--host", host.as_str()];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(&args)
            .output()
            .unwrap()
    };
    let dry = down(&["--dry-run"]);
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{out}");
    assert!(out.contains("1 containers, 1 volumes"), "{out}");
    assert_eq!(sandboxes.managed_containers(false).await.unwrap().len(), 1);
    let gone = down(&[]);
    let out = String::from_utf8_lossy(&gone.stdout);
    assert!(
        gone.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert!(out.contains("removed 1 containers, 1 volumes"), "{out}");
    assert!(
        sandboxes
            .managed_containers(false)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(sandboxes.workspace_volumes(false).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_benchmark_runs_and_reports() {
    // A miniature run: checks the benchmark works end to end (it also checks that a restore
    // brings back every file and that pool calls were served from the pool), not how fast.
    ensure_image("busybox");
    let report = herd::lab::bench::workspace::run(herd::lab::bench::workspace::Params {
        workspace_mib: 4,
        rounds: 1,
        first_calls: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!((report.full.n, report.restore.n), (1, 1));
    assert!(report.archive_bytes > 4 << 20);
    assert!(report.incremental_stored_bytes < report.full_stored_bytes);
    assert_eq!((report.first_call_cold.n, report.first_call_pool.n), (2, 2));
    assert!(report.table().contains("ratio pool / cold"));
    // The ratios are measured, not printed labels: both are finite and above zero.
    for r in [report.pool_ratio, report.full_ratio, report.restore_ratio] {
        assert!(r.is_finite() && r > 0.0, "{r}");
    }
}
