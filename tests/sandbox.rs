//! Sandboxes and the built-in tools against the real Docker engine (busybox image).

mod common;

use std::time::{Duration, Instant};

use herd::event::SessionId;
use herd::hands::sandbox::{SandboxConfig, SandboxError, Sandboxes};
use herd::hands::tools::{self, OUTPUT_CAP, ToolOutcome};
use serde_json::{Value, json};

const IMAGE: &str = "herd-sandbox:busybox";

fn ensure_image() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let status = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sandbox-images/build"
        ))
        .arg("busybox")
        .status()
        .expect("run sandbox-images/build");
        assert!(status.success(), "building {IMAGE} failed");
    });
}

struct Rig {
    sandboxes: Sandboxes,
    session: SessionId,
}

impl Rig {
    async fn new(config: SandboxConfig) -> Self {
        ensure_image();
        let sandboxes =
            Sandboxes::connect(&format!("test-{}", uuid::Uuid::new_v4().simple()), config)
                .await
                .expect("docker is reachable");
        Self {
            sandboxes,
            session: SessionId::generate(),
        }
    }

    async fn start() -> Self {
        Self::new(SandboxConfig {
            default_image: IMAGE.into(),
            ..Default::default()
        })
        .await
    }

    async fn tool(&self, name: &str, input: Value) -> Result<ToolOutcome, SandboxError> {
        let sb = self.sandboxes.ensure(&self.session, None).await?;
        tools::run(&self.sandboxes, &sb, name, &input).await
    }

    async fn ok(&self, name: &str, input: Value) -> String {
        let out = self.tool(name, input.clone()).await.expect("sandbox alive");
        assert!(!out.is_error, "{name} {input}: {}", out.text);
        out.text
    }

    async fn err(&self, name: &str, input: Value) -> String {
        let out = self.tool(name, input.clone()).await.expect("sandbox alive");
        assert!(out.is_error, "{name} {input} should fail: {}", out.text);
        out.text
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let (s, id) = (self.sandboxes.clone(), self.session.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(s.destroy(&id));
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_works_and_fails_clearly() {
    let r = Rig::start().await;
    let out = r
        .ok(
            "bash",
            json!({"command": "echo hello; echo oops >&2; exit 3"}),
        )
        .await;
    assert!(
        out.contains("exit code: 3") && out.contains("hello") && out.contains("oops"),
        "{out}"
    );

    assert_eq!(
        r.ok(
            "write",
            json!({"path": "src/app.py", "content": "print('hi')\nprint('hi')\n"})
        )
        .await,
        "wrote 24 bytes to src/app.py"
    );
    assert_eq!(
        r.ok("read", json!({"path": "src/app.py"})).await,
        "print('hi')\nprint('hi')\n"
    );
    assert_eq!(
        r.ok(
            "read",
            json!({"path": "src/app.py", "offset": 1, "limit": 1})
        )
        .await,
        "print('hi')"
    );
    assert!(
        r.err(
            "edit",
            json!({"path": "src/app.py", "old_string": "print('hi')", "new_string": "x"})
        )
        .await
        .contains("occurs 2 times")
    );
    assert!(
        r.err(
            "edit",
            json!({"path": "src/app.py", "old_string": "absent", "new_string": "x"})
        )
        .await
        .contains("not found")
    );
    r.ok("edit", json!({"path": "src/app.py", "old_string": "print('hi')\nprint('hi')", "new_string": "print('bye')"})).await;
    assert_eq!(
        r.ok("read", json!({"path": "src/app.py"})).await,
        "print('bye')\n"
    );
    r.ok(
        "write",
        json!({"path": "src/deep/b.py", "content": "import os\n"}),
    )
    .await;
    r.ok(
        "write",
        json!({"path": "notes.txt", "content": "import nothing\n"}),
    )
    .await;
    assert_eq!(
        r.ok("glob", json!({"pattern": "**/*.py"})).await,
        "src/app.py\nsrc/deep/b.py"
    );
    assert_eq!(r.ok("glob", json!({"pattern": "*.txt"})).await, "notes.txt");
    assert!(
        r.ok("glob", json!({"pattern": "*.rs"}))
            .await
            .contains("no files match")
    );
    let hits = r.ok("grep", json!({"pattern": "^import"})).await;
    assert!(
        hits.contains("src/deep/b.py:1:import os") && hits.contains("notes.txt:1:import nothing"),
        "{hits}"
    );
    assert!(
        r.ok("grep", json!({"pattern": "zebra"}))
            .await
            .contains("no matches")
    );

    assert!(
        r.err("read", json!({"path": "missing.txt"}))
            .await
            .contains("cannot read missing.txt")
    );
    assert!(
        r.err("bash", json!({"cmd": "ls"}))
            .await
            .contains("needs a string \"command\"")
    );
    assert!(
        r.err("write", json!({"path": "x"}))
            .await
            .contains("\"content\"")
    );
    assert!(
        r.err("grep", json!({"pattern": "(unclosed"}))
            .await
            .contains("grep failed")
    );
    assert!(
        r.err("teleport", json!({}))
            .await
            .contains("no built-in tool")
    );
    // A command that echoes its input back (cat into /dev/stdout) neither deadlocks the hand
    // nor hangs the call.
    let echoed = r
        .tool(
            "write",
            json!({"path": "/dev/stdout", "content": "x".repeat(1_000_000)}),
        )
        .await
        .expect("sandbox alive");
    assert!(!echoed.text.is_empty());
    // Option-like paths are paths, not options (find -delete would empty the workspace).
    assert!(
        r.err("glob", json!({"pattern": "*", "path": "-delete"}))
            .await
            .contains("cannot list ./-delete")
    );
    assert_eq!(
        r.ok("read", json!({"path": "src/app.py"})).await,
        "print('bye')\n"
    );
    // The root filesystem is read-only; only /workspace and /tmp are writable.
    assert!(
        r.err("write", json!({"path": "/etc/evil", "content": "x"}))
            .await
            .contains("cannot write")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_is_hardened() {
    // SAFETY: nextest runs each test in its own process, and nothing else here reads the
    // environment concurrently. The canary stands for credentials in the hand's environment.
    unsafe { std::env::set_var("HERD_TEST_CANARY", "canary-9f2e41") };
    let r = Rig::start().await;
    let out = r
        .ok("bash", json!({"command": "id -u; grep CapEff /proc/self/status; ls /sys/class/net; touch /x 2>&1; env; cat /proc/1/environ | tr '\\0' ' '"}))
        .await;
    assert!(out.contains("65534"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(
        out.lines().any(|l| l == "lo") && !out.contains("eth0"),
        "{out}"
    );
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!out.contains("canary-9f2e41"), "{out}");
    // No network at all: no DNS, no outside address, not the host.
    let probe = r.ok("bash", json!({"command": "wget -q -T 2 -O- http://1.1.1.1/ 2>&1; echo rc=$?; nslookup example.com 2>&1 | tail -1; wget -q -T 2 -O- http://172.17.0.1:4222/ 2>&1; echo rc=$?"})).await;
    assert_eq!(probe.matches("rc=1").count(), 2, "{probe}");
    // docker inspect: the hardening flags, and nothing of this process's environment.
    let sb = r.sandboxes.ensure(&r.session, None).await.unwrap();
    let c = r
        .sandboxes
        .docker()
        .inspect_container(&sb.id, None)
        .await
        .unwrap();
    let hc = c.host_config.unwrap();
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(
        hc.security_opt
            .unwrap()
            .contains(&"no-new-privileges".to_string())
    );
    assert!(hc.binds.unwrap_or_default().is_empty());
    let inspect = serde_json::to_string(&c.config).unwrap();
    assert!(!inspect.contains("canary-9f2e41"));
    assert!(!inspect.contains("docker.sock"));
    assert_eq!(
        c.config.unwrap().labels.unwrap()["herd.session"],
        r.session.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_floods_and_lost_sandboxes_are_tool_errors() {
    let r = Rig::new(SandboxConfig {
        default_image: IMAGE.into(),
        memory_bytes: 64 << 20,
        ..Default::default()
    })
    .await;
    // A busy loop past its timeout is killed; the sandbox survives.
    let t = Instant::now();
    let out = r
        .err(
            "bash",
            json!({"command": "while :; do :; done", "timeout_secs": 1}),
        )
        .await;
    assert!(out.contains("timed out after 1s"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(8));
    assert!(
        r.ok("bash", json!({"command": "echo still here"}))
            .await
            .contains("still here")
    );
    // A flood of output is capped, and the caller is told.
    let out = r
        .ok("bash", json!({"command": "yes | head -c 20000000"}))
        .await;
    assert!(out.len() < OUTPUT_CAP + 1024, "{}", out.len());
    assert!(
        out.contains("output truncated"),
        "{}",
        &out[out.len() - 200..]
    );
    // Out of memory: the sandbox is lost, the next call gets a fresh one.
    let first = r.sandboxes.ensure(&r.session, None).await.unwrap();
    let lost = r
        .tool(
            "bash",
            json!({"command": "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo ${#x}"}),
        )
        .await;
    match lost {
        Err(SandboxError::Lost(why)) => {
            assert!(why.contains("memory") || why.contains("137"), "{why}")
        }
        Ok(o) => assert!(
            o.text.contains("137") || o.is_error,
            "the allocation must not succeed: {}",
            o.text
        ),
        Err(e) => panic!("{e}"),
    }
    // Killed from outside mid-tool.
    let sb = r.sandboxes.ensure(&r.session, None).await.unwrap();
    let killer = {
        let docker = r.sandboxes.docker().clone();
        let id = sb.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = docker
                .kill_container(&id, None::<bollard::query_parameters::KillContainerOptions>)
                .await;
        })
    };
    let killed = r.tool("bash", json!({"command": "sleep 20"})).await;
    killer.await.unwrap();
    assert!(matches!(killed, Err(SandboxError::Lost(_))), "{killed:?}");
    let fresh = r.sandboxes.ensure(&r.session, None).await.unwrap();
    assert!(fresh.fresh && fresh.id != first.id);
    // The workspace volume outlives its containers.
    r.ok("write", json!({"path": "keep.txt", "content": "kept"}))
        .await;
    let again = r.sandboxes.ensure(&r.session, None).await.unwrap();
    r.sandboxes.kill(&again).await;
    assert_eq!(r.ok("read", json!({"path": "keep.txt"})).await, "kept");
}

/// The default image (GNU coreutils' `timeout`), as sessions run it.
const DEBIAN: &str = "herd-sandbox:debian";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_or_a_hung_tool_leaves_the_sandbox_usable() {
    let r = Rig::new(SandboxConfig {
        default_image: DEBIAN.into(),
        ..Default::default()
    })
    .await;
    let sb = r.sandboxes.ensure(&r.session, None).await.unwrap();
    // A server the model started earlier, which must outlive what follows.
    r.ok(
        "bash",
        json!({"command": "setsid sh -c 'sleep 3000' >/dev/null 2>&1 < /dev/null & echo started"}),
    )
    .await;
    // A fork bomb runs into the process limit (128) until its timeout kills its whole group.
    let t = Instant::now();
    let bomb = r
        .tool(
            "bash",
            json!({"command": "b() { b | b & }; b; sleep 30", "timeout_secs": 3}),
        )
        .await
        .expect("the sandbox survives a fork bomb");
    assert!(
        bomb.is_error || bomb.text.contains("stopped"),
        "{}",
        bomb.text
    );
    // Then a normal command in the same sandbox.
    let alive = r.ok("bash", json!({"command": "echo alive"})).await;
    assert!(alive.contains("alive"), "{alive}");
    let same = r.sandboxes.ensure(&r.session, None).await.unwrap();
    assert!(!same.fresh && same.id == sb.id, "the sandbox was replaced");
    eprintln!("fork bomb to a working sandbox: {:?}", t.elapsed());
    // A read that never ends (a FIFO with no writer) meets its own timeout: a tool error,
    // and the sandbox and its background server stay.
    r.ok("bash", json!({"command": "mkfifo /tmp/pipe"})).await;
    let t = Instant::now();
    let hung = r.err("read", json!({"path": "/tmp/pipe"})).await;
    assert!(hung.contains("/tmp/pipe"), "{hung}");
    eprintln!("hung read answered after {:?}", t.elapsed());
    let same = r.sandboxes.ensure(&r.session, None).await.unwrap();
    assert!(!same.fresh && same.id == sb.id, "the sandbox was replaced");
    let ps = r
        .ok(
            "bash",
            json!({"command": "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"}),
        )
        .await;
    assert!(
        ps.contains("sleep 3000"),
        "the background server died: {ps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_commands_leave_the_host_and_the_sandbox_usable() {
    let r = Rig::start().await;
    // Output without end: the command is stopped at the cap (not after its 600 s timeout),
    // and it is gone afterwards.
    let t = Instant::now();
    let sb = r.sandboxes.ensure(&r.session, None).await.unwrap();
    let out = r
        .ok("bash", json!({"command": "yes", "timeout_secs": 600}))
        .await;
    assert!(
        out.len() < OUTPUT_CAP + 2048 && out.contains("the command was stopped there"),
        "{}",
        &out[out.len().saturating_sub(300)..]
    );
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    let procs = r
        .ok(
            "bash",
            json!({"command": "cat /proc/[0-9]*/comm 2>/dev/null | grep -cx yes || true"}),
        )
        .await;
    assert!(procs.contains("stdout ---\n0"), "a yes survived: {procs}");
    let same = r.sandboxes.ensure(&r.session, None).await.unwrap();
    assert!(!same.fresh && same.id == sb.id, "the sandbox was replaced");
    // No Docker API inside, and no host paths.
    let out = r.ok("bash", json!({"command": "ls /var/run/docker.sock 2>&1; ls /run 2>&1; cat /proc/mounts | grep -c ' / '"})).await;
    assert!(
        out.contains("No such file") && !out.contains("docker.sock\n"),
        "{out}"
    );
}
