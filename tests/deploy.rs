//! The deployment files: compose.yaml is valid Compose (checked by the Compose tool itself),
//! runs the planes the README promises, and gives the Docker socket to hands only.

use std::process::Command;

/// `docker compose` (v2) when it exists, else `docker-compose` (v1, Debian's package).
fn compose() -> Command {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    }
}

fn compose_config(args: &[&str]) -> String {
    let out = compose()
        .args([
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/compose.yaml"),
            "config",
        ])
        .args(args)
        .env_remove("HERD_IMAGE")
        .env_remove("HERD_NATS_IMAGE")
        .output()
        .expect("a Compose tool (docker compose or docker-compose) must be installed");
    assert!(
        out.status.success(),
        "compose config {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn compose_yaml_is_valid_and_runs_every_plane() {
    compose_config(&["-q"]);
    // `cli` is behind a profile: Compose v1 lists it, v2 does not.
    let mut services: Vec<String> = compose_config(&["--services"])
        .lines()
        .filter(|s| *s != "cli")
        .map(String::from)
        .collect();
    services.sort();
    assert_eq!(
        services,
        ["brain", "gateway", "hands", "n1", "n2", "n3", "streams"]
    );
    let full = compose_config(&[]);
    // The socket is mounted exactly once (the hands), and the brains get the model keys.
    assert_eq!(full.matches("docker.sock").count(), 2, "{full}"); // source and target
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/compose.yaml")).unwrap();
    // A service's block: from its header (`  name:`) to the next header or top-level key.
    let block = |name: &str| -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in text.lines() {
            let header = line.starts_with("  ") && !line.starts_with("   ") && line.ends_with(':');
            let top = !line.starts_with(' ') && !line.is_empty();
            if header || top {
                inside = line.trim() == format!("{name}:");
                continue;
            }
            if inside {
                out += line;
                out += "\n";
            }
        }
        assert!(!out.is_empty(), "no service {name} in compose.yaml");
        out
    };
    assert!(block("hands").contains("docker.sock"));
    assert!(!block("brain").contains("docker.sock"));
    assert!(block("brain").contains("ANTHROPIC_API_KEY"));
    assert!(!block("hands").contains("API_KEY"));
    // Every node runs the shared cluster config (which the next lines check).
    assert_eq!(full.matches("nats-cluster.conf").count(), 3, "{full}");
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nats-cluster.conf"
    ))
    .unwrap();
    assert!(conf.contains("sync_interval: always"));
    // Roles: every node includes the users and cluster blocks `herd auth init` writes and
    // mounts them; every herd service connects with its own role's key.
    assert!(conf.contains("include \"auth/users.conf\""));
    assert!(conf.contains("include \"auth/cluster.conf\""));
    assert_eq!(
        full.matches("/etc/nats/auth/users.conf").count(),
        3,
        "{full}"
    );
    assert!(
        !text.contains(".herd/auth:"),
        "nodes mount the two blocks, never the seeds"
    );
    assert!(block("brain").contains("HERD_BRAIN_NKEY"));
    // The gateway: its own role, no socket, no model keys.
    assert!(block("gateway").contains("HERD_GATEWAY_NKEY"));
    assert!(!block("gateway").contains("docker.sock") && !block("gateway").contains("API_KEY"));
    assert!(block("hands").contains("HERD_HANDS_NKEY"));
    assert!(block("streams").contains("HERD_OPERATOR_NKEY"));
    assert_eq!(
        text.matches("HERD_OPERATOR_NKEY").count(),
        2,
        "only streams and cli"
    );
    // Monitoring stays on each node's loopback and is not published (N26).
    assert!(conf.contains("http: 127.0.0.1:8222"));
    assert!(!conf.contains("0.0.0.0:8222") && !text.contains("8222:8222"));
    // The cluster block herd writes authenticates its routes.
    let block = herd::auth::cluster_block("pw");
    assert!(block.contains("authorization { user: route, password: \"pw\" }"));
    assert_eq!(block.matches("nats-route://route:pw@").count(), 3);
}
