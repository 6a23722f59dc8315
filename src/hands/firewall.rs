//! The host firewall rule that leaves an egress bridge only the proxy's port (N12).
//!
//! Docker gives an `internal` bridge a host address and does not filter what arrives there:
//! packets from a sandbox to the bridge's address go through the host's INPUT chain, so a
//! limited sandbox could reach every host service listening on 0.0.0.0 (sshd, a node
//! exporter, a Docker API on TCP, NATS in a compose deployment). The hand therefore jumps from
//! INPUT, for packets arriving on the bridge, to a chain of its own that accepts TCP to the
//! proxy's address and port and drops everything else (IPv6 too, where ip6tables exists).
//!
//! This needs `iptables` and the rights to use it (root, or CAP_NET_ADMIN in the host's
//! network namespace). Without them egress is not offered at all: fail closed.

use std::net::IpAddr;

use tokio::process::Command;

/// Why the rule could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `iptables` is missing or failed.
    #[error("iptables {args}: {why}")]
    Iptables {
        /// The arguments.
        args: String,
        /// What it said.
        why: String,
    },
}

/// A bridge closed to all but one port; [`Firewall::open`] takes the rule away again.
#[derive(Debug)]
pub struct Firewall {
    chain: String,
    bridge: String,
}

async fn run(tool: &str, args: &[&str]) -> Result<bool, FirewallError> {
    let out = Command::new(tool)
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|e| FirewallError::Iptables {
            args: args.join(" "),
            why: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(true);
    }
    // `-C` answers "no such rule" with status 1; anything else is a failure.
    if args.first() == Some(&"-C") && out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(FirewallError::Iptables {
        args: args.join(" "),
        why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Loads `rules` with `iptables-restore --noflush` (other chains are left as they are).
async fn restore(rules: &str) -> Result<(), FirewallError> {
    use tokio::io::AsyncWriteExt;
    let fail = |why: String| FirewallError::Iptables {
        args: "iptables-restore --noflush".into(),
        why,
    };
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// The chain's name for a bridge (iptables allows 28 characters).
fn chain_for(bridge: &str) -> String {
    let mut c = format!("HERD-{bridge}");
    c.truncate(28);
    c
}

impl Firewall {
    /// Lets packets arriving on `bridge` reach only `gateway:port` (TCP) on this host.
    /// Idempotent: a hand that restarts replaces its old rule.
    pub async fn close(bridge: &str, gateway: IpAddr, port: u16) -> Result<Self, FirewallError> {
        let chain = chain_for(bridge);
        let port = port.to_string();
        let gw = gateway.to_string();
        // The chain's rules in one atomic commit (a restarted hand replaces its old rules with
        // no moment in which the chain is empty and lets everything through).
        let rules = format!(
            "*filter\n:{chain} - [0:0]\n-A {chain} -p tcp -d {gw} --dport {port} -j ACCEPT\n-A {chain} -j DROP\nCOMMIT\n"
        );
        restore(&rules).await?;
        let jump = ["INPUT", "-i", bridge, "-j", chain.as_str()];
        if !run("iptables", &[&["-C"], &jump[..]].concat()).await? {
            run(
                "iptables",
                &[&["-I"], &jump[..1], &["1"], &jump[1..]].concat(),
            )
            .await?;
        }
        // IPv6 on the bridge reaches nothing on the host (best effort: no ip6tables, or no
        // IPv6 at all, leaves nothing to close).
        let drop6 = ["INPUT", "-i", bridge, "-j", "DROP"];
        if let Ok(false) = run("ip6tables", &[&["-C"], &drop6[..]].concat()).await {
            let _ = run(
                "ip6tables",
                &[&["-I"], &drop6[..1], &["1"], &drop6[1..]].concat(),
            )
            .await;
        }
        Ok(Self {
            chain,
            bridge: bridge.to_string(),
        })
    }

    /// Removes the rules of bridges that no longer exist (a hand that died, a network removed
    /// by hand): a rule naming a missing interface matches nothing, but they pile up.
    pub async fn sweep_stale() {
        let Ok(out) = Command::new("iptables")
            .args(["-w", "-S", "INPUT"])
            .output()
            .await
        else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(i), Some(j)) = (
                words.iter().position(|w| *w == "-i"),
                words.iter().position(|w| *w == "-j"),
            ) else {
                continue;
            };
            let (Some(bridge), Some(chain)) = (words.get(i + 1), words.get(j + 1)) else {
                continue;
            };
            if !chain.starts_with("HERD-br-")
                || std::path::Path::new("/sys/class/net").join(bridge).exists()
            {
                continue;
            }
            Self {
                chain: chain.to_string(),
                bridge: bridge.to_string(),
            }
            .open()
            .await;
        }
    }

    /// Takes the rule away (when the bridge itself is removed).
    pub async fn open(&self) {
        let jump = [
            "INPUT",
            "-i",
            self.bridge.as_str(),
            "-j",
            self.chain.as_str(),
        ];
        while let Ok(true) = run("iptables", &[&["-D"], &jump[..]].concat()).await {}
        let _ = run("iptables", &["-F", &self.chain]).await;
        let _ = run("iptables", &["-X", &self.chain]).await;
        let drop6 = ["INPUT", "-i", self.bridge.as_str(), "-j", "DROP"];
        while let Ok(true) = run("ip6tables", &[&["-D"], &drop6[..]].concat()).await {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_names_fit_iptables() {
        assert_eq!(super::chain_for("br-0123456789ab"), "HERD-br-0123456789ab");
        assert!(super::chain_for(&"x".repeat(40)).len() <= 28);
    }
}
