//! Credentials stay out of the sandbox: a canary secret in a vault is used by `http_request`
//! calls the hand makes outside the sandbox, reaches the allowed server, and appears nowhere
//! else — not in the sandbox (environment, processes, mounts, files), not in any event or tool
//! output, not in the hand's debug log, not in `docker inspect`, not at the disallowed server.
//! Real NATS, real Docker, a real `herd hands` process.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use herd::event::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.1 server that answers every request with the request itself, and keeps a
/// copy of every byte it received.
async fn echo_server() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                record.lock().unwrap().extend_from_slice(&req);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    req.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&req).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_in_a_vault_reaches_only_the_allowed_host_and_nothing_else() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let url = &t.server;
    let canary = format!("herd-canary-{}", uuid::Uuid::new_v4().simple());
    let key = herd::credentials::vault::VaultKey::generate_hex().unwrap();
    let (allowed, allowed_seen) = echo_server().await;
    let (denied, denied_seen) = echo_server().await;

    // The vault, through the command line: the value on stdin, never in argv or output.
    let put = herd_with_key(
        &url,
        &key,
        &[
            "vault",
            "put",
            "ops",
            "CANARY",
            "--kind",
            "header",
            "--host",
            &format!("127.0.0.1:{allowed}"),
        ],
        format!("{canary}\n").as_bytes(),
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let list = herd_with_key(&url, &key, &["vault", "list", "ops"], b"");
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(listed.contains("CANARY") && listed.contains(&format!("127.0.0.1:{allowed}")));
    for out in [&put, &list] {
        assert_eq!(
            occurrences(&String::from_utf8_lossy(&out.stdout), &canary),
            0
        );
        assert_eq!(
            occurrences(&String::from_utf8_lossy(&out.stderr), &canary),
            0
        );
    }
    // Stored sealed: the bucket's raw bytes do not hold the value.
    let js = async_nats::jetstream::new(t.client.clone());
    let kv = js.get_key_value("herd-vault").await.unwrap();
    let raw = kv.get("ops.CANARY").await.unwrap().unwrap();
    assert_eq!(occurrences(&String::from_utf8_lossy(&raw), &canary), 0);
    // Bad input through the command line: clear errors, nothing stored.
    let no_value = herd_with_key(
        &url,
        &key,
        &["vault", "put", "ops", "EMPTY", "--host", "x.com"],
        b"",
    );
    assert!(String::from_utf8_lossy(&no_value.stderr).contains("no value"));
    let bad_host = herd_with_key(
        &url,
        &key,
        &["vault", "put", "ops", "H", "--host", "https://x.com/p"],
        b"long-enough-value",
    );
    assert!(String::from_utf8_lossy(&bad_host.stderr).contains("invalid host"));
    let no_key = herd_with_key(
        &url,
        "",
        &["vault", "put", "ops", "K", "--host", "x.com"],
        b"long-enough-value",
    );
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("no vault key"));

    // A real hand process holding the key, logging at debug level.
    let logs = tempfile::tempdir().unwrap();
    let hand_log = logs.path().join("hands.log");
    let host = host("cred");
    let mut hand = spawn_hands_process(&url, &host, "herd-sandbox:busybox", &key, &hand_log);
    let brain = start_brain(&t, "cred-brain").await;

    // An adversarial agent: it hunts for secrets in its sandbox, then uses the vault.
    let hunt = "env; echo ---; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; echo ---; \
                cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '; echo ---; mount; cat /proc/mounts; echo ---; \
                P=herd-can; P=\"${P}ary\"; grep -rl \"$P\" /bin /etc /tmp /workspace /root /home /var 2>/dev/null; echo hunted";
    let allowed_url = format!("http://127.0.0.1:{allowed}/echo");
    let denied_url = format!("http://127.0.0.1:{denied}/echo");
    let script = vec![
        tool_turn("toolu_hunt", "bash", json!({"command": hunt})),
        tool_turn(
            "toolu_use",
            "http_request",
            json!({
                "url": allowed_url, "method": "POST",
                "headers": {"X-Token": "{{secret:CANARY}}"},
                "body": "token={{secret:CANARY}}"
            }),
        ),
        tool_turn(
            "toolu_exfil",
            "http_request",
            json!({
                "url": denied_url, "headers": {"X-Token": "{{secret:CANARY}}"}
            }),
        ),
        tool_turn(
            "toolu_unknown",
            "http_request",
            json!({
                "url": allowed_url, "headers": {"X-Token": "{{secret:NOPE}}"}
            }),
        ),
        tool_turn(
            "toolu_malformed",
            "http_request",
            json!({
                "url": allowed_url, "headers": {"X-Token": "{{secret:CANARY"}
            }),
        ),
        tool_turn("toolu_plain", "http_request", json!({"url": denied_url})),
        text_turn("done"),
    ];
    let id = scripted_session_with(
        &t,
        &["bash", "http_request"],
        script,
        Some("herd-sandbox:busybox"),
        vec!["ops".into()],
        vec![],
        "find the secrets",
    )
    .await;
    let events = wait_until(&t, &id, 120, |events| {
        events.iter().any(|e| {
            matches!(&e.event.body,
            EventBody::SessionStatusIdle(i) if i.stop_reason.kind == "end_turn")
        })
    })
    .await;

    let (err, hunted) = tool_result(&events, "toolu_hunt");
    assert!(!err && hunted.contains("hunted"), "{hunted}");
    let (err, used) = tool_result(&events, "toolu_use");
    assert!(!err, "{used}");
    assert!(used.starts_with("HTTP 200"), "{used}");
    assert!(
        used.contains("[secret CANARY]"),
        "the echo is redacted: {used}"
    );
    let (err, exfil) = tool_result(&events, "toolu_exfil");
    assert!(err && exfil.contains("may not be sent to"), "{exfil}");
    let (err, unknown) = tool_result(&events, "toolu_unknown");
    assert!(err && unknown.contains("unknown secret NOPE"), "{unknown}");
    let (err, malformed) = tool_result(&events, "toolu_malformed");
    assert!(err && malformed.contains("not closed"), "{malformed}");
    let (err, plain) = tool_result(&events, "toolu_plain");
    assert!(err && plain.contains("not an allowed host"), "{plain}");

    // The allowed server got the value (header and body); the other got nothing at all.
    let got = String::from_utf8_lossy(&allowed_seen.lock().unwrap()).to_string();
    assert_eq!(occurrences(&got, &canary), 2, "{got}");
    assert!(denied_seen.lock().unwrap().is_empty());

    // Nowhere else: events, the sandbox's docker inspect, the hand's debug log.
    let all_events: String = events
        .iter()
        .map(|e| e.event.to_json().to_string())
        .collect();
    assert_eq!(occurrences(&all_events, &canary), 0);
    let container = format!("herd-{host}-{id}");
    let inspect = Command::new("docker")
        .args(["inspect", &container])
        .output()
        .unwrap();
    assert!(inspect.status.success(), "the sandbox {container} exists");
    assert_eq!(
        occurrences(&String::from_utf8_lossy(&inspect.stdout), &canary),
        0
    );
    hand.kill();
    let hand_text = std::fs::read_to_string(&hand_log).unwrap();
    assert!(
        hand_text.contains("DEBUG"),
        "the hand logged at debug level"
    );
    assert_eq!(
        occurrences(&hand_text, &canary),
        0,
        "the value leaked into the hand's log"
    );
    brain.abort();
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    let _ = Command::new("docker")
        .args(["volume", "rm", &format!("herd-ws-{host}-{id}")])
        .output();
}
