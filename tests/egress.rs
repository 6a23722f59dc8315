//! Optional egress: a sandbox with `networking: limited` reaches its allowed hosts through the
//! hand's proxy and nothing else; a sandbox without it reaches nothing at all.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herd::event::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server that answers `marker` and counts its requests.
async fn server(marker: &'static str) -> (u16, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            *count.lock().unwrap() += 1;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{marker}",
                marker.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    (port, hits)
}

const PROBE: &str = r#"
import sys, urllib.request
def get(url, proxy=True):
    try:
        opener = urllib.request.build_opener() if proxy else urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return opener.open(url, timeout=4).read().decode()
    except Exception as e:
        return "ERR " + str(e)
a, b = sys.argv[1], sys.argv[2]
print("allowed:", get("http://127.0.0.1:%s/" % a))
print("denied:", get("http://127.0.0.1:%s/" % b))
print("direct:", get("http://127.0.0.1:%s/" % a, proxy=False))
print("outside:", get("http://1.1.1.1/", proxy=False))
"#;

fn probe_script(a: u16, b: u16) -> Vec<serde_json::Value> {
    vec![
        tool_turn(
            "toolu_w",
            "write",
            json!({"path": "probe.py", "content": PROBE}),
        ),
        tool_turn(
            "toolu_probe",
            "bash",
            json!({"command": format!("python3 probe.py {a} {b}; echo; env | grep -i _proxy= || echo 'no proxy env'")}),
        ),
        text_turn("done"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_networking_reaches_only_allowed_hosts_and_none_reaches_nothing() {
    ensure_image("debian");
    let t = TestNats::start().await;
    let (allowed, allowed_hits) = server("ALLOWED-OK").await;
    let (denied, denied_hits) = server("DENIED-REACHED").await;
    let brain = start_brain(&t, "egress-brain").await;
    let hand_host = host("egress");
    let (hands, sandboxes) = start_hands(
        &t,
        &hand_host,
        "herd-sandbox:debian",
        Duration::from_secs(10),
    )
    .await;

    let mut ids = Vec::new();
    for networking in [Some("limited"), None] {
        let mut agent = AgentConfig::new("scripted");
        agent.tools = vec![builtin("bash"), builtin("write")];
        agent.script = probe_script(allowed, denied);
        let id = SessionId::generate();
        t.log
            .create(
                &id,
                &Event::new(SessionCreated {
                    agent,
                    environment: EnvironmentConfig {
                        image: Some("herd-sandbox:debian".into()),
                        allowed_hosts: vec![format!("127.0.0.1:{allowed}")],
                        networking: networking.map(String::from),
                    },
                    title: None,
                    metadata: Default::default(),
                    vault_ids: vec![],
                    resources: vec![],
                    limits: Default::default(),
                }),
            )
            .await
            .unwrap();
        send(&t, &id, "probe the network").await;
        ids.push(id);
    }
    let mut outputs = Vec::new();
    for id in &ids {
        let events = wait_idles(&t, id, 1).await;
        let (err, out) = tool_result(&events, "toolu_probe");
        assert!(!err, "{out}");
        eprintln!("--- {id}:\n{out}");
        outputs.push(out);
    }
    let (limited, none) = (&outputs[0], &outputs[1]);
    // With limited networking: the allowed host answers through the proxy; the other host is
    // refused by the proxy; going around the proxy reaches nothing.
    assert!(limited.contains("allowed: ALLOWED-OK"), "{limited}");
    assert!(
        limited.contains("denied: ERR") && limited.contains("403"),
        "{limited}"
    );
    assert!(limited.contains("direct: ERR"), "{limited}");
    assert!(limited.contains("outside: ERR"), "{limited}");
    // Without it: nothing answers, and there is no proxy to ask.
    for line in [
        "allowed: ERR",
        "denied: ERR",
        "direct: ERR",
        "outside: ERR",
        "no proxy env",
    ] {
        assert!(none.contains(line), "{line} in {none}");
    }
    assert_eq!(
        *allowed_hits.lock().unwrap(),
        1,
        "one request, from the limited sandbox"
    );
    assert_eq!(*denied_hits.lock().unwrap(), 0);
    brain.abort();
    hands.abort();
    for id in &ids {
        sandboxes.destroy(id).await;
    }
    // Docker has room for few networks: leave none behind.
    let removed = std::process::Command::new("docker")
        .args(["network", "rm", &format!("herd-egress-{hand_host}")])
        .output()
        .unwrap();
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
}
