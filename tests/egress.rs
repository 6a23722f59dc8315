//! Optional egress: a sandbox with `networking: limited` reaches its allowed hosts through the
//! hand's proxy and nothing else; a sandbox without it reaches nothing at all.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herd::event::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server on loopback that answers `marker` and counts its requests.
async fn server(marker: &'static str) -> (u16, Arc<Mutex<usize>>) {
    server_on("127.0.0.1", marker).await
}

/// An HTTP server on `addr` that answers `marker` and counts the connections that sent bytes.
async fn server_on(addr: &str, marker: &'static str) -> (u16, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind((addr, 0)).await.unwrap();
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
def raw(host, port):
    import socket
    try:
        s = socket.create_connection((host, int(port)), timeout=3)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return "CONNECTED " + s.recv(100).decode(errors="replace")
    except Exception as e:
        return "ERR " + str(e)
def dns(name):
    import socket
    try:
        return "RESOLVED " + str(socket.getaddrinfo(name, 80))
    except Exception as e:
        return "ERR " + str(e)
import os, urllib.parse
a, b, c, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
gw = urllib.parse.urlparse(os.environ.get("HTTP_PROXY", "http://0.0.0.0:1")).hostname
print("allowed:", get("http://127.0.0.1:%s/" % a))
print("denied:", get("http://127.0.0.1:%s/" % b))
print("direct:", get("http://127.0.0.1:%s/" % a, proxy=False))
print("outside:", get("http://1.1.1.1/", proxy=False))
print("host-any:", raw(gw, c))
print("nats:", raw(gw, n))
print("dns:", dns("deb.debian.org"))
"#;

fn probe_script(a: u16, b: u16, c: u16, n: u16) -> Vec<serde_json::Value> {
    vec![
        tool_turn(
            "toolu_w",
            "write",
            json!({"path": "probe.py", "content": PROBE}),
        ),
        tool_turn(
            "toolu_probe",
            "bash",
            json!({"command": format!("python3 probe.py {a} {b} {c} {n}; echo; env | grep -i _proxy= || echo 'no proxy env'")}),
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
    // A host service on every interface (not the proxy's port): the bridge must not reach it.
    let (any, any_hits) = server_on("0.0.0.0", "HOST-SERVICE-REACHED").await;
    let brain = start_brain(&t, "egress-brain").await;
    let hand_host = host("egress");
    let (hands, sandboxes) = start_hands_with(
        &t,
        herd::hands::HandsConfig {
            // The test's servers are on loopback, which the proxy refuses unless allowed.
            allowed_ranges: vec!["127.0.0.1/32".parse().unwrap()],
            ..hands_config(&hand_host, "herd-sandbox:debian")
        },
    )
    .await;
    // The host itself resolves the name the sandboxes will try.
    let host_resolves = tokio::net::lookup_host(("deb.debian.org", 80))
        .await
        .is_ok();

    let mut ids = Vec::new();
    for networking in [Some("limited"), None] {
        let mut agent = AgentConfig::new("scripted");
        agent.tools = vec![builtin("bash"), builtin("write")];
        agent.script = probe_script(allowed, denied, any, t.server.port());
        let id = SessionId::generate();
        t.log
            .create(
                &id,
                &Event::new(SessionCreated {
                    environment: EnvironmentConfig {
                        image: Some("herd-sandbox:debian".into()),
                        allowed_hosts: vec![format!("127.0.0.1:{allowed}")],
                        networking: networking.map(String::from),
                    },
                    ..SessionCreated::new(agent)
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
    // The bridge's host address reaches the proxy's port and nothing else (N12); no name
    // resolves inside (N13), though the host resolves it.
    assert!(limited.contains("host-any: ERR"), "{limited}");
    assert!(limited.contains("dns: ERR"), "{limited}");
    assert!(limited.contains("nats: ERR"), "NATS reached: {limited}");
    eprintln!("the host resolves deb.debian.org: {host_resolves}");
    // Without it: nothing answers, and there is no proxy to ask.
    for line in [
        "allowed: ERR",
        "denied: ERR",
        "direct: ERR",
        "outside: ERR",
        "host-any: ERR",
        "nats: ERR",
        "dns: ERR",
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
    assert_eq!(*any_hits.lock().unwrap(), 0, "a host service was reached");
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

/// Sends one proxy request head to the proxy at `proxy` and returns the first line and body.
async fn ask_proxy(proxy: std::net::SocketAddr, head: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_addresses_are_refused_by_the_proxy_and_http_request_after_resolution() {
    use herd::hands::address::AddressPolicy;
    use herd::hands::egress::Egress;
    let (port, hits) = server("LOOPBACK-REACHED").await;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let hand_host = host("policy");
    let egress = Egress::start(&docker, &hand_host, AddressPolicy::default())
        .await
        .expect("egress starts (needs iptables)");
    let proxy: std::net::SocketAddr = egress
        .proxy_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // This test speaks to the proxy from the host, from the bridge's own address, as if it
    // were a sandbox with this allow-list: every entry names somewhere special.
    let entries = vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "169.254.169.254".to_string(),
        "169.254.169.254:80".to_string(),
        "[::1]:80".to_string(),
        "0.0.0.0:80".to_string(),
        "10.0.0.1:80".to_string(),
        "127.0.0.1".to_string(),
    ];
    egress.allow(proxy.ip(), entries.clone());
    let cases = [
        (
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n"),
            "localhost resolves to",
        ),
        (
            format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            "localhost resolves to",
        ),
        (
            "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n".to_string(),
            "link-local",
        ),
        (
            "CONNECT [::1]:80 HTTP/1.1\r\n\r\n".to_string(),
            "::1 is a loopback address",
        ),
        (
            "CONNECT 0.0.0.0:80 HTTP/1.1\r\n\r\n".to_string(),
            "unspecified",
        ),
        (
            "CONNECT 10.0.0.1:80 HTTP/1.1\r\n\r\n".to_string(),
            "private",
        ),
        // A portless entry means 443 and 80, never the test server's port.
        (
            format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", port + 1),
            "a host without a port means 443 and 80",
        ),
    ];
    for (head, why) in &cases {
        let answer = ask_proxy(proxy, head).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{head:?}: {answer}");
        assert!(
            answer.contains(why),
            "{head:?} should say {why:?}: {answer}"
        );
        assert!(!answer.contains("LOOPBACK-REACHED"), "{answer}");
    }
    // A head that never completes is cut off (N15).
    let t = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(proxy).await.unwrap();
    slow.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.contains("408"), "{answer}");
    eprintln!(
        "a stalled request head was answered after {:?}",
        t.elapsed()
    );
    // At most MAX_CONNECTIONS held at once per sandbox.
    let mut held = Vec::new();
    for _ in 0..herd::hands::egress::MAX_CONNECTIONS {
        held.push(tokio::net::TcpStream::connect(proxy).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = ask_proxy(proxy, "CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = ask_proxy(proxy, "CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "slots come back: {answer}"
    );

    // http_request, with the same allow-list, refuses the same places.
    let tool =
        herd::hands::http_request::HttpRequests::new(None, AddressPolicy::default()).unwrap();
    let access = herd::hands::job::SessionAccess {
        allowed_hosts: entries,
        ..Default::default()
    };
    for (url, why) in [
        (format!("http://127.0.0.1:{port}/"), "loopback"),
        (format!("http://localhost:{port}/"), "localhost resolves to"),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "link-local",
        ),
        ("http://[::1]/".to_string(), "loopback"),
        (
            format!("http://127.0.0.1:{}/", port + 1),
            "not an allowed host",
        ),
    ] {
        let out = tool.run(&access, &json!({ "url": url })).await;
        assert!(
            out.is_error && out.text.contains(why),
            "{url}: {}",
            out.text
        );
    }
    // With the operator's range, the same loopback server is reached.
    let lan = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    let tool = herd::hands::http_request::HttpRequests::new(None, lan).unwrap();
    let out = tool
        .run(
            &access,
            &json!({ "url": format!("http://127.0.0.1:{port}/") }),
        )
        .await;
    assert!(out.text.contains("LOOPBACK-REACHED"), "{}", out.text);
    assert_eq!(*hits.lock().unwrap(), 1, "only the allowed request arrived");
    egress.remove(&docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_git_helper_is_herds_image_off_the_host_network_and_no_entrypoint_runs() {
    use herd::hands::address::AddressPolicy;
    use herd::hands::egress::Egress;
    use herd::hands::sandbox::{SandboxConfig, Sandboxes};
    ensure_image("git");
    ensure_image("busybox");
    // A tenant's image whose ENTRYPOINT and HEALTHCHECK would leave marks in the workspace.
    let planted = "herd-test-planted:latest";
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM herd-sandbox:busybox\n\
         ENTRYPOINT [\"/bin/sh\", \"-c\", \"echo ran > /workspace/ENTRYPOINT-RAN; exec \\\"$@\\\"\", \"x\"]\n\
         HEALTHCHECK --interval=1s CMD touch /workspace/HEALTH-RAN\n",
    )
    .unwrap();
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", planted])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let hand_host = host("helper");
    let sandboxes = Sandboxes::connect(
        &hand_host,
        SandboxConfig {
            default_image: planted.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let docker = sandboxes.docker().clone();
    let egress = Egress::start(&docker, &hand_host, AddressPolicy::default())
        .await
        .expect("egress starts (needs iptables)");
    let session = SessionId::generate();
    let helper = sandboxes
        .git_helper(
            &session,
            Some(planted),
            egress.network(),
            egress.proxy_url(),
        )
        .await
        .expect("a helper starts");
    let inspected = docker.inspect_container(&helper.id, None).await.unwrap();
    let host_config = inspected.host_config.clone().unwrap();
    assert_eq!(
        host_config.network_mode.as_deref(),
        Some(egress.network()),
        "the helper is on the egress network, never the host's"
    );
    let git_image = docker.inspect_image("herd-git:latest").await.unwrap();
    assert_eq!(
        inspected.image, git_image.id,
        "the helper runs herd's git image"
    );
    // The session's user, so the workspace stays the sandbox's.
    let config = inspected.config.clone().unwrap();
    assert_eq!(config.user.as_deref(), Some("65534:65534"));
    sandboxes.remove_helper(&helper).await;

    // The session's own sandbox from the planted image: neither ENTRYPOINT nor HEALTHCHECK.
    let sandbox = sandboxes.ensure(&session, Some(planted)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = sandboxes
        .exec(
            &sandbox,
            vec!["ls".into(), "-a".into(), "/workspace".into()],
            None,
            4096,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.contains("ENTRYPOINT-RAN") && !listing.contains("HEALTH-RAN"),
        "{listing}"
    );
    let inspected = docker.inspect_container(&sandbox.id, None).await.unwrap();
    assert!(
        inspected.state.and_then(|s| s.health).is_none(),
        "no health check runs"
    );
    sandboxes.destroy(&session).await;
    egress.remove(&docker).await;
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", planted])
        .output();
}
