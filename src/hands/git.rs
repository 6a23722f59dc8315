//! Git repositories as session resources, with the token kept out of the sandbox.
//!
//! The hand clones a session's repositories into its workspace when the sandbox is provisioned
//! (the remote stays token-free), and the `git_remote` tool pushes and pulls for the model. All
//! network git work happens in a short-lived helper container (the session's image and
//! workspace, the host's network, no environment), never in the sandbox, with the credential
//! passed on stdin as an `http.extraHeader` — it is never written to disk or to the repository.
//!
//! The workspace repository is the model's, so its config and hooks are hostile: a push run in
//! it could have `http.proxy`, `url.<x>.insteadOf` or a `pre-push` hook send the header
//! elsewhere. So the helper never runs a networked git command in it. A push first fetches the
//! branch *from* the workspace into a fresh private bare repository (a local fetch runs
//! upload-pack, which runs no hooks), then pushes from there to the resource's pinned URL with
//! global and system config off and hooks disabled. A pull fetches into a private repository,
//! then clones it bare into `/workspace/.herd-git/<name>`, from which the sandbox — without
//! network or credentials — fetches and fast-forwards.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::egress::Egress;
use super::job::SessionAccess;
use super::sandbox::{Sandbox, SandboxError, Sandboxes};
use super::tools::ToolOutcome;
use crate::credentials::placeholders;
use crate::credentials::vault::{Credential, Kind, Vault, VaultKey};
use crate::event::{Resource, SessionId, check_branch};

/// The tool's name.
pub const TOOL: &str = "git_remote";

/// The most output kept from a git command.
const OUTPUT_CAP: usize = 64 * 1024;

const PREAMBLE: &str = "set -e\nIFS= read -r H\nexport GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0 HOME=/tmp\n";

const CLONE: &str = r#"url="$1"; dest="$2"; branch="$3"
if [ -e "$dest" ]; then echo "$dest is already there"; exit 0; fi
if [ -n "$branch" ]; then
  git -c "http.extraHeader=$H" clone -q --branch "$branch" -- "$url" "$dest"
else
  git -c "http.extraHeader=$H" clone -q -- "$url" "$dest"
fi
echo "cloned into $dest""#;

const PUSH: &str = r#"url="$1"; repo="$2"; branch="$3"
tmp=$(mktemp -d /tmp/herd-git.XXXXXX)
git init -q --bare "$tmp"
git -C "$tmp" -c core.hooksPath=/dev/null fetch -q --no-tags "$repo" "+refs/heads/$branch:refs/heads/$branch"
git -C "$tmp" -c core.hooksPath=/dev/null -c "http.extraHeader=$H" push "$url" "refs/heads/$branch:refs/heads/$branch" 2>&1"#;

const FETCH: &str = r#"url="$1"; name="$2"; branch="$3"
tmp=$(mktemp -d /tmp/herd-git.XXXXXX)
git init -q --bare "$tmp"
git -C "$tmp" -c core.hooksPath=/dev/null -c "http.extraHeader=$H" fetch -q --no-tags "$url" "+refs/heads/$branch:refs/heads/$branch"
mkdir -p /workspace/.herd-git
rm -rf "/workspace/.herd-git/$name"
git clone -q --bare "$tmp" "/workspace/.herd-git/$name"
echo fetched"#;

/// The tool's input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    action: String,
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    branch: Option<String>,
}

fn err(text: impl Into<String>) -> ToolOutcome {
    ToolOutcome {
        text: text.into(),
        is_error: true,
    }
}

/// What an authorization header built from a git credential looks like, and its forms to
/// redact.
fn header(c: &Credential) -> (String, Vec<(String, String)>) {
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("x-access-token:{}", c.value.expose()));
    let forms = vec![
        (c.name.clone(), c.value.expose().to_string()),
        (c.name.clone(), basic.clone()),
    ];
    (format!("Authorization: Basic {basic}"), forms)
}

/// The `host:port` of a repository URL, as the egress proxy's rule for the helper.
fn proxy_target(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?.trim_matches(['[', ']']).to_ascii_lowercase();
    Some(format!("{host}:{}", u.port_or_known_default()?))
}

/// Clones, pushes and pulls for a hand.
#[derive(Clone)]
pub struct GitRemote {
    vault: Option<(Vault, VaultKey)>,
}

impl GitRemote {
    /// With the vault store and key (`None`: only public repositories).
    pub fn new(vault: Option<(Vault, VaultKey)>) -> Self {
        Self { vault }
    }

    async fn credential(
        &self,
        r: &Resource,
        vault_ids: &[String],
    ) -> Result<Option<Credential>, String> {
        let Some(name) = &r.credential else {
            return Ok(None);
        };
        let Some((vault, key)) = &self.vault else {
            return Err(
                "this hand holds no vault key, so it cannot authenticate to the repository".into(),
            );
        };
        for v in vault_ids {
            match vault.get(key, v, name).await {
                Ok(c) => {
                    if c.kind != Kind::Git {
                        return Err(format!("credential {name} is not a git credential"));
                    }
                    let url = reqwest::Url::parse(&r.url).map_err(|e| e.to_string())?;
                    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
                    if url.scheme() == "http" && !super::http_request::is_loopback(&host) {
                        return Err("a token is sent only over https (plain http only to this machine's loopback)".into());
                    }
                    let port = url.port_or_known_default().unwrap_or(443);
                    let allowed = super::http_request::host_allowed(&c.hosts, &host, port);
                    if !allowed {
                        return Err(format!(
                            "credential {name} may not be sent to {host}:{port}; it is allowed for {}",
                            c.hosts.join(", ")
                        ));
                    }
                    return Ok(Some(c));
                }
                Err(crate::credentials::vault::VaultError::NotFound { .. }) => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "unknown credential {name}: no vault of this session ({}) holds it",
            vault_ids.join(", ")
        ))
    }

    /// Runs one script in a fresh helper, the header on stdin; the helper is always removed.
    /// The helper reaches `url`'s host and port through the egress proxy, and nothing else.
    #[allow(clippy::too_many_arguments)]
    async fn in_helper(
        &self,
        sandboxes: &Sandboxes,
        net: &Egress,
        session: &SessionId,
        image: &str,
        url: &str,
        script: &str,
        args: &[&str],
        header: &str,
    ) -> Result<(bool, String), SandboxError> {
        let Some(target) = proxy_target(url) else {
            return Ok((false, format!("{url} has no host to reach")));
        };
        let helper: Sandbox = sandboxes
            .git_helper(session, Some(image), net.network(), net.proxy_url())
            .await?;
        let Some(ip) = sandboxes.address_on(&helper, net.network()).await else {
            sandboxes.remove_helper(&helper).await;
            return Err(SandboxError::Docker(
                "the git helper has no address on the egress network".into(),
            ));
        };
        net.allow(ip, vec![target]);
        let mut cmd = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("{PREAMBLE}{script}"),
            "herd-git".to_string(),
        ];
        cmd.extend(args.iter().map(|a| a.to_string()));
        let out = sandboxes
            .exec(
                &helper,
                cmd,
                Some(format!("{header}\n").into_bytes()),
                OUTPUT_CAP,
                std::time::Duration::from_secs(300),
            )
            .await;
        net.forget(ip);
        sandboxes.remove_helper(&helper).await;
        let out = out?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.exit_code == Some(0), text))
    }

    /// Clones every resource that is not in the workspace yet. Returns a note for the model.
    pub async fn clone_missing(
        &self,
        sandboxes: &Sandboxes,
        net: &Egress,
        session: &SessionId,
        image: &str,
        access: &SessionAccess,
    ) -> Result<Option<String>, SandboxError> {
        let (resources, vault_ids) = (&access.resources, &access.vault_ids);
        let mut notes = Vec::new();
        for r in resources {
            if let Err(e) = r.check() {
                notes.push(format!("Repository {} was not cloned: {e}", r.url));
                continue;
            }
            let path = r.workspace_path().unwrap_or_default();
            let (hdr, forms) = match self.credential(r, vault_ids).await {
                Ok(Some(c)) => header(&c),
                Ok(None) => ("X-Herd: public".to_string(), vec![]),
                Err(e) => {
                    notes.push(format!("Repository {} was not cloned: {e}", r.url));
                    continue;
                }
            };
            let dest = format!("/workspace/{path}");
            let branch = r.branch.clone().unwrap_or_default();
            let (ok, text) = self
                .in_helper(
                    sandboxes,
                    net,
                    session,
                    image,
                    &r.url,
                    CLONE,
                    &[&r.url, &dest, &branch],
                    &hdr,
                )
                .await?;
            let text = placeholders::redact(&text, &forms);
            if ok {
                if text.contains("cloned into") {
                    notes.push(format!(
                        "Repository {} is cloned at {dest} (its remote holds no token: push and pull with the git_remote tool).",
                        r.url
                    ));
                }
            } else {
                notes.push(format!(
                    "Repository {} could not be cloned: {}",
                    r.url,
                    text.trim()
                ));
            }
        }
        Ok((!notes.is_empty()).then(|| notes.join("\n")))
    }

    /// Runs one `git_remote` call. Errors the model can act on are outcomes; a lost sandbox or
    /// Docker failure is returned for the worker to handle.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        sandboxes: &Sandboxes,
        net: &Egress,
        sandbox: &Sandbox,
        session: &SessionId,
        image: &str,
        access: &SessionAccess,
        input: &Value,
    ) -> Result<ToolOutcome, SandboxError> {
        let (resources, vault_ids) = (&access.resources, &access.vault_ids);
        let input: Input = match serde_json::from_value(input.clone()) {
            Ok(i) => i,
            Err(e) => {
                return Ok(err(format!(
                    "invalid git_remote input: {e}; expected {{\"action\": \"push\" | \"pull\", \"repository\": \"<mount path>\", \"branch\": \"…\"}}"
                )));
            }
        };
        let resource = match &input.repository {
            Some(p) => resources
                .iter()
                .find(|r| r.workspace_path().ok().as_deref() == Some(p.trim_matches('/'))),
            None if resources.len() == 1 => resources.first(),
            None => None,
        };
        let Some(r) = resource else {
            let known: Vec<String> = resources
                .iter()
                .filter_map(|r| r.workspace_path().ok())
                .collect();
            return Ok(err(format!(
                "no such repository; this session's repositories: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        if let Err(e) = r.check() {
            return Ok(err(e));
        }
        let path = r.workspace_path().unwrap_or_default();
        let repo = format!("/workspace/{path}");
        // The branch: the call's, the resource's, or the one checked out in the sandbox.
        let branch = match input.branch.clone().or_else(|| r.branch.clone()) {
            Some(b) => b,
            None => {
                let out = sandboxes
                    .exec(
                        sandbox,
                        vec![
                            "git".into(),
                            "-C".into(),
                            repo.clone(),
                            "rev-parse".into(),
                            "--abbrev-ref".into(),
                            "HEAD".into(),
                        ],
                        None,
                        4096,
                        std::time::Duration::from_secs(30),
                    )
                    .await?;
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
        };
        if let Err(e) = check_branch(&branch) {
            return Ok(err(e));
        }
        let (hdr, forms) = match self.credential(r, vault_ids).await {
            Ok(Some(c)) => header(&c),
            Ok(None) => ("X-Herd: public".to_string(), vec![]),
            Err(e) => return Ok(err(e)),
        };
        match input.action.as_str() {
            "push" if !r.may_push(&branch) => Ok(err(format!(
                "pushing to {branch:?} is not allowed for this repository; it allows {}. Push your work to an allowed branch (git checkout -b <name>).",
                r.push_branches.join(", ")
            ))),
            "push" => {
                let (ok, text) = self
                    .in_helper(
                        sandboxes,
                        net,
                        session,
                        image,
                        &r.url,
                        PUSH,
                        &[&r.url, &repo, &branch],
                        &hdr,
                    )
                    .await?;
                let text = placeholders::redact(text.trim(), &forms);
                Ok(ToolOutcome {
                    text: if ok {
                        format!("pushed {branch} to {}\n{text}", r.url)
                    } else {
                        format!("push failed: {text}")
                    },
                    is_error: !ok,
                })
            }
            "pull" => {
                let name = path.replace('/', "_");
                let (ok, text) = self
                    .in_helper(
                        sandboxes,
                        net,
                        session,
                        image,
                        &r.url,
                        FETCH,
                        &[&r.url, &name, &branch],
                        &hdr,
                    )
                    .await?;
                if !ok {
                    let text = placeholders::redact(text.trim(), &forms);
                    return Ok(err(format!("fetch failed: {text}")));
                }
                // Into the model's repository, inside the sandbox: no network, no credential.
                let script = format!(
                    "set -e; cd {repo}; git fetch -q /workspace/.herd-git/{name} '+refs/heads/{branch}:refs/remotes/origin/{branch}'; git merge --ff-only -q origin/{branch} && git log --oneline -1"
                );
                let out = sandboxes
                    .exec(
                        sandbox,
                        vec!["sh".into(), "-c".into(), script],
                        None,
                        OUTPUT_CAP,
                        std::time::Duration::from_secs(120),
                    )
                    .await?;
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let ok = out.exit_code == Some(0);
                Ok(ToolOutcome {
                    text: if ok {
                        format!("pulled {branch} from {}; now at {}", r.url, text.trim())
                    } else {
                        format!(
                            "fetched {branch} into origin/{branch}, but it does not fast-forward: {}\nMerge or rebase onto origin/{branch} yourself.",
                            text.trim()
                        )
                    },
                    is_error: !ok,
                })
            }
            other => Ok(err(format!(
                "unknown action {other:?}; expected push or pull"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(url: &str, path: Option<&str>) -> Resource {
        Resource {
            kind: "git_repository".into(),
            url: url.into(),
            mount_path: path.map(String::from),
            branch: None,
            credential: None,
            push_branches: vec![],
        }
    }

    #[test]
    fn resources_and_branches_are_checked() {
        assert_eq!(
            repo("https://h/o/app.git", None).workspace_path().unwrap(),
            "app"
        );
        assert_eq!(
            repo("https://h/o/app", Some("src/app"))
                .workspace_path()
                .unwrap(),
            "src/app"
        );
        for bad in ["../x", "/", "a/../b", "-x", ".herd-git/x", "a b"] {
            assert!(
                repo("https://h/x", Some(bad)).workspace_path().is_err(),
                "{bad}"
            );
        }
        assert!(repo("https://u:p@h/x.git", None).check().is_err());
        assert!(repo("ssh://h/x.git", None).check().is_err());
        assert!(repo("https://h/x.git", None).check().is_ok());
        for bad in ["", "-f", "a..b", "a b", "x.lock", "a;rm", "$(x)"] {
            assert!(check_branch(bad).is_err(), "{bad}");
        }
        assert!(check_branch("feature/one-2").is_ok());
    }

    #[test]
    fn pushes_go_only_to_allowed_branches() {
        let mut r = repo("https://h/x.git", None);
        assert!(r.may_push("main"), "no list: any branch");
        r.push_branches = vec!["herd/*".into(), "dev".into()];
        assert!(r.check().is_ok());
        assert!(r.may_push("herd/fix-1") && r.may_push("dev"));
        assert!(!r.may_push("main") && !r.may_push("develop") && !r.may_push("herd"));
        for bad in ["*", "a*b/*", "-x*", "a..b"] {
            r.push_branches = vec![bad.into()];
            assert!(r.check().is_err(), "{bad}");
        }
    }
}
