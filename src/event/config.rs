//! The configuration vocabulary: the agent a session runs (model, system prompt, tools), its
//! environment (image, networking, allowed hosts) and its resources. These are the Managed
//! Agents API's *agent* and *environment* resources as they are recorded in `session.created`,
//! so the log alone rebuilds a session, and every front door validates them with the same
//! [`SessionCreated::validate`] before anything is appended.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pricing::{Budget, BudgetRefusal};
use super::tools::{
    MAX_MCP_SERVERS, McpServer, McpToolPolicy, ToolType, builtin, builtin_names, valid_tool_name,
};
use super::{IdError, SessionCreated, check_token};

/// How a tool call may run without asking the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionPolicy {
    /// Run without asking.
    #[default]
    AlwaysAllow,
    /// Park the session until a `user.tool_confirmation` allows or denies the call.
    AlwaysAsk,
}

/// A tool the agent may call, or (`mcp_toolset`) the tools of one of its MCP servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolConfig {
    /// The tool's name as the model sees it (`bash`, `read`, or a custom tool's name); empty
    /// for an `mcp_toolset`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `builtin` (see the catalogue, [`super::tools::BUILTINS`]), `custom` (answered by the
    /// client with `user.custom_tool_result`) or `mcp_toolset`.
    #[serde(default = "ToolConfig::default_kind", rename = "type")]
    pub kind: ToolType,
    /// What the tool does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the tool's input (required for custom tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// Whether a call needs the user's confirmation.
    #[serde(default)]
    pub permission_policy: PermissionPolicy,
    /// For an `mcp_toolset`: the server (one of the agent's `mcp_servers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_server_name: Option<String>,
    /// For an `mcp_toolset`: whether the server's tools are offered and how calls are
    /// allowed, unless `configs` says otherwise for a tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<McpToolPolicy>,
    /// For an `mcp_toolset`: per-tool overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<McpToolPolicy>,
}

impl ToolConfig {
    fn default_kind() -> ToolType {
        ToolType::Builtin
    }

    /// The built-in tool `name`, allowed without asking.
    pub fn builtin(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: ToolType::Builtin,
            description: None,
            input_schema: None,
            permission_policy: PermissionPolicy::AlwaysAllow,
            mcp_server_name: None,
            default_config: None,
            configs: Vec::new(),
        }
    }
}

/// The agent a session runs: model, system prompt and tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// The model id, as the provider names it.
    pub model: String,
    /// Which provider serves the model (`anthropic`, `openai`, `scripted`); inferred when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolConfig>,
    /// The output-token limit of one model request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// For the `scripted` provider: its assistant turns, in order (content blocks and an
    /// optional stop_reason each). Kept in the configuration so every brain that replays the
    /// session gets the same answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub script: Vec<Value>,
    /// Context budget in estimated tokens; past it, older turns are compacted into a summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_budget_tokens: Option<u32>,
    /// MCP servers whose tools `mcp_toolset` entries offer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<McpServer>,
}

impl AgentConfig {
    /// An agent on `model` with no system prompt and no tools.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            provider: None,
            name: None,
            system: None,
            tools: Vec::new(),
            max_tokens: None,
            script: Vec::new(),
            context_budget_tokens: None,
            mcp_servers: Vec::new(),
        }
    }
}

/// Where the agent's tools run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentConfig {
    /// The sandbox image; the hands' default image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Hosts the `http_request` tool may reach without a credential (`host` or `host:port`).
    /// Sandboxes themselves have no network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// The sandbox's network: absent or `none` (the default) for none at all; `limited` for an
    /// HTTP(S) proxy that lets it reach `allowed_hosts` only (package installs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<String>,
}

/// A session resource: a git repository the hand clones into the workspace when the sandbox is
/// provisioned. The token is named, never carried: `credential` is a `git` credential of the
/// session's vaults, used only by the hand, outside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// `git_repository`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository's https URL, without credentials.
    pub url: String,
    /// Where it goes, relative to `/workspace` (default: the URL's last segment without `.git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// The branch to check out and to push and pull (default: the remote's default branch for
    /// the clone, then the current branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The vault credential (kind `git`) that authenticates clone, push and pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The branches `git_remote` may push to: names, or prefixes ending in `*` (`herd/*`).
    /// Empty: any branch. A prompt-injected model could otherwise push to `main`, or add a
    /// CI workflow that runs with the repository's secrets (N29); server-side branch
    /// protection is the other half.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push_branches: Vec<String>,
}

/// Who made a session through the gateway, and from what: the tenant that owns it and the
/// Managed Agents API objects (the agent at its resolved version, the environment) it was
/// created from, kept whole so the log alone rebuilds what the gateway shows. herd runs the
/// session from `agent` and `environment` of [`SessionCreated`], never from these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// The tenant that owns the session; no other tenant sees it.
    pub tenant: String,
    /// The agent object (its id, version, model, tools, …) as the gateway returned it.
    pub agent: Value,
    /// The environment object.
    pub environment: Value,
}

/// herd's limits on what one session may use (DESIGN rule 11): each bounds a looping agent.
/// Unset means the deployment's default (a per-turn cap on model requests; nothing else).
///
/// Unknown fields are ignored, not refused: the limits are part of `session.created` and
/// `session.updated`, and a reader must meet a field added by a newer herd (as
/// `wall_seconds_per_turn` and `budget` were) without failing to read the whole event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Model requests in one turn (default [`DEFAULT_MODEL_REQUESTS_PER_TURN`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_requests_per_turn: Option<u64>,
    /// Model requests over the session's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_requests: Option<u64>,
    /// Tool calls in one turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls_per_turn: Option<u64>,
    /// Tool calls over the session's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<u64>,
    /// Output tokens in one turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_turn: Option<u64>,
    /// Output tokens over the session's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Seconds one turn may run, from the event that began it: the first
    /// `session.status_running` since the session's last idle, read from the log, so a brain
    /// that crashed and replays counts from the same start (like the other per-turn limits, a
    /// turn parked on the user with `requires_action` starts counting again when it resumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds_per_turn: Option<u64>,
    /// The cost budget (the Managed Agents API's `budget`): the session's list cost is
    /// checked against it before each model request. Set at creation; an update may raise or
    /// remove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// Model requests one turn may make when the session sets no limit: a tool loop ends.
pub const DEFAULT_MODEL_REQUESTS_PER_TURN: u64 = 500;

impl SessionLimits {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Sets one limit by name (`model_requests=50`); an error names the known ones.
    pub fn set(&mut self, name: &str, value: u64) -> Result<(), ConfigError> {
        let slot = match name {
            "model_requests_per_turn" => &mut self.model_requests_per_turn,
            "model_requests" => &mut self.model_requests,
            "tool_calls_per_turn" => &mut self.tool_calls_per_turn,
            "tool_calls" => &mut self.tool_calls,
            "output_tokens_per_turn" => &mut self.output_tokens_per_turn,
            "output_tokens" => &mut self.output_tokens,
            "wall_seconds_per_turn" => &mut self.wall_seconds_per_turn,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown limit {other:?}; expected model_requests_per_turn, model_requests, tool_calls_per_turn, tool_calls, output_tokens_per_turn, output_tokens or wall_seconds_per_turn (the cost budget has its own flag)"
                )));
            }
        };
        if value == 0 {
            return Err(ConfigError::Invalid(format!(
                "limit {name} must be at least 1"
            )));
        }
        *slot = Some(value);
        Ok(())
    }
}

/// The model providers a session may name.
pub const PROVIDERS: &[&str] = &["anthropic", "openai", "scripted"];

/// Why a session's configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An id or name that must be a subject token is not one.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A field has a value herd cannot use.
    #[error("{0}")]
    Invalid(String),
    /// A budget refused for one of the Managed Agents API's reasons.
    #[error("{reason}: {detail}")]
    Budget {
        /// `budget_create_only`, `budget_not_raised` or `model_not_budgetable`.
        reason: BudgetRefusal,
        /// What exactly, for people.
        detail: String,
    },
}

impl SessionCreated {
    /// A session of `agent` with everything else at its default: no title, metadata, vaults
    /// or resources, the default environment and limits.
    pub fn new(agent: AgentConfig) -> Self {
        Self {
            agent,
            environment: EnvironmentConfig::default(),
            title: None,
            metadata: Default::default(),
            vault_ids: vec![],
            resources: vec![],
            limits: Default::default(),
            origin: None,
        }
    }

    /// Checks everything a front door must refuse before the session exists: a model, a
    /// known provider, tools that exist (custom tools with a schema), vault names, allowed
    /// hosts, networking and resources. Normalises allowed hosts in place (lower case,
    /// trimmed), as they are matched later.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.agent.model.trim().is_empty() {
            return bad("the model must not be empty".into());
        }
        if let Some(p) = self.agent.provider.as_deref()
            && !PROVIDERS.contains(&p)
        {
            return bad(format!(
                "unknown provider {p:?}; expected anthropic, openai or scripted"
            ));
        }
        self.check_tools()?;
        for v in &self.vault_ids {
            check_token("vault name", v)?;
        }
        self.environment.allowed_hosts = self
            .environment
            .allowed_hosts
            .iter()
            .map(|h| normalize_host(h))
            .collect::<Result<_, _>>()?;
        match self.environment.networking.as_deref() {
            None | Some("none") | Some("limited") => {}
            Some(other) => return bad(format!("networking {other:?}: expected none or limited")),
        }
        for r in &self.resources {
            r.check().map_err(ConfigError::Invalid)?;
        }
        if let Some(b) = &self.limits.budget {
            b.check()?;
            if b.list_prices.is_some() {
                return bad(
                    "budget: list_prices is herd's to set, from the deployment's price table"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// Normalises and checks an allowed host: `host` or `host:port`, no scheme, path or wildcard.
pub fn normalize_host(host: &str) -> Result<String, ConfigError> {
    let h = host.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !h.starts_with('.')
        && !h.contains("..");
    if !ok {
        return Err(ConfigError::Invalid(format!(
            "invalid host {host:?}: expected a host name or address, optionally with :port (no scheme, path or wildcard)"
        )));
    }
    Ok(h)
}

impl Resource {
    /// Checks a resource when a session is created (and again when it is used).
    pub fn check(&self) -> Result<(), String> {
        if self.kind != "git_repository" {
            return Err(format!(
                "unknown resource type {:?}; expected git_repository",
                self.kind
            ));
        }
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("invalid url {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "https" | "http")
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err("a repository URL must be http(s) and carry no credentials: name a vault credential instead".into());
        }
        self.workspace_path()?;
        if let Some(b) = &self.branch {
            check_branch(b)?;
        }
        for p in &self.push_branches {
            // A trailing `*` is the only wildcard: check_branch refuses one anywhere else.
            check_branch(p.strip_suffix('*').unwrap_or(p).trim_end_matches('/'))
                .map_err(|e| format!("push_branches entry {p:?}: {e}"))?;
        }
        Ok(())
    }

    /// Whether `git_remote` may push to `branch` (always, when no `push_branches` are set).
    pub fn may_push(&self, branch: &str) -> bool {
        self.push_branches.is_empty()
            || self
                .push_branches
                .iter()
                .any(|p| match p.strip_suffix('*') {
                    Some(prefix) => branch.starts_with(prefix),
                    None => p == branch,
                })
    }

    /// Where the resource goes under `/workspace`: its `mount_path`, or the URL's last
    /// segment without `.git`.
    pub fn workspace_path(&self) -> Result<String, String> {
        let path = match &self.mount_path {
            Some(p) => p.trim_matches('/').to_string(),
            None => self
                .url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .trim_end_matches(".git")
                .to_string(),
        };
        let ok = !path.is_empty()
            && path.len() <= 200
            && !path.starts_with('-')
            && !path.starts_with(".herd-git")
            && path
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if ok {
            Ok(path)
        } else {
            Err(format!(
                "invalid mount path {path:?}: a relative path of letters, digits, '.', '_', '-' and '/'"
            ))
        }
    }
}

/// A branch name safe to pass to git and the shell scripts.
pub fn check_branch(b: &str) -> Result<(), String> {
    let ok = !b.is_empty()
        && b.len() <= 200
        && !b.starts_with('-')
        && !b.starts_with('/')
        && !b.ends_with('/')
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid branch name {b:?}"))
    }
}

impl SessionCreated {
    /// Checks the agent's tools and MCP servers: built-in tools that exist, custom tools with
    /// names the model can call, MCP servers with unique names and http(s) URLs, each named by
    /// exactly the toolsets that use it.
    fn check_tools(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut names: Vec<&str> = Vec::new();
        for t in &self.agent.tools {
            match &t.kind {
                ToolType::Builtin if builtin(&t.name).is_none() => {
                    return bad(format!(
                        "{:?} is not a built-in tool ({}); custom tools go in --agent",
                        t.name,
                        builtin_names()
                    ));
                }
                ToolType::Builtin => {}
                ToolType::Custom => {
                    if !valid_tool_name(&t.name) {
                        return bad(format!(
                            "custom tool {:?}: a tool name is 1 to 64 letters, digits, _ or -",
                            t.name
                        ));
                    }
                    if builtin(&t.name).is_some() {
                        return bad(format!(
                            "custom tool {:?}: the name is a built-in tool's",
                            t.name
                        ));
                    }
                }
                ToolType::McpToolset => {
                    let Some(server) = t.mcp_server_name.as_deref() else {
                        return bad("an mcp_toolset needs mcp_server_name".into());
                    };
                    if !self.agent.mcp_servers.iter().any(|s| s.name == server) {
                        return bad(format!(
                            "mcp_toolset names the MCP server {server:?}, which is not in mcp_servers"
                        ));
                    }
                    if self
                        .agent
                        .tools
                        .iter()
                        .filter(|o| o.mcp_server_name.as_deref() == Some(server))
                        .count()
                        > 1
                    {
                        return bad(format!(
                            "more than one mcp_toolset for the MCP server {server:?}"
                        ));
                    }
                    if t.configs.len() > super::tools::MAX_MCP_TOOLS {
                        return bad(format!(
                            "mcp_toolset {server:?}: at most {} tool configs",
                            super::tools::MAX_MCP_TOOLS
                        ));
                    }
                    continue;
                }
                ToolType::Other(other) => {
                    return bad(format!(
                        "tool {:?}: unknown type {other:?} (builtin, custom or mcp_toolset)",
                        t.name
                    ));
                }
            }
            if names.contains(&t.name.as_str()) {
                return bad(format!("the tool {:?} is named twice", t.name));
            }
            names.push(&t.name);
        }
        if self.agent.mcp_servers.len() > MAX_MCP_SERVERS {
            return bad(format!("at most {MAX_MCP_SERVERS} MCP servers"));
        }
        for (i, s) in self.agent.mcp_servers.iter().enumerate() {
            check_token("MCP server name", &s.name)?;
            if s.name.len() > 64 {
                return bad(format!(
                    "MCP server name {:?} is over 64 characters",
                    s.name
                ));
            }
            if s.kind != "url" {
                return bad(format!(
                    "MCP server {:?}: type {:?} is not supported (url: Streamable HTTP)",
                    s.name, s.kind
                ));
            }
            if self.agent.mcp_servers[..i].iter().any(|o| o.name == s.name) {
                return bad(format!("the MCP server {:?} is named twice", s.name));
            }
            check_mcp_url(&s.url)
                .map_err(|e| ConfigError::Invalid(format!("MCP server {:?}: {e}", s.name)))?;
            if let Some(c) = &s.credential {
                check_token("credential name", c)?;
            }
            if !self.agent.tools.iter().any(|t| {
                t.kind == ToolType::McpToolset && t.mcp_server_name.as_deref() == Some(&s.name)
            }) {
                return bad(format!(
                    "the MCP server {:?} is named by no mcp_toolset (each server needs one)",
                    s.name
                ));
            }
        }
        Ok(())
    }
}

/// Checks an MCP server URL's shape: `http(s)://host[:port]/path`, no credentials in it, at
/// most 2,048 bytes. Where it may connect is the hand's address policy, checked at first use.
pub fn check_mcp_url(url: &str) -> Result<(), String> {
    if url.len() > 2048 {
        return Err("the URL is over 2048 bytes".into());
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not allowed; name a vault credential".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL contains whitespace or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created() -> SessionCreated {
        SessionCreated::new(AgentConfig::new("claude-x"))
    }

    #[test]
    fn a_valid_configuration_passes_and_hosts_are_normalised() {
        let mut c = created();
        c.environment.allowed_hosts = vec![" Example.COM:8443 ".into()];
        c.validate().unwrap();
        assert_eq!(c.environment.allowed_hosts, ["example.com:8443"]);
    }

    #[test]
    fn limits_from_a_newer_herd_still_read() {
        let l: SessionLimits = serde_json::from_value(serde_json::json!({
            "tool_calls": 3, "wall_seconds_per_turn": 60, "a_limit_from_the_future": 1
        }))
        .unwrap();
        assert_eq!((l.tool_calls, l.wall_seconds_per_turn), (Some(3), Some(60)));
    }

    #[test]
    fn each_bad_field_is_named() {
        let refused = |f: &dyn Fn(&mut SessionCreated)| {
            let mut c = created();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(refused(&|c| c.agent.model = " ".into()).contains("model must not be empty"));
        assert!(refused(&|c| c.agent.provider = Some("x".into())).contains("unknown provider"));
        assert!(
            refused(&|c| c.agent.tools.push(ToolConfig::builtin("nope")))
                .contains("is not a built-in tool")
        );
        assert!(refused(&|c| c.vault_ids.push("a.b".into())).contains("vault name"));
        assert!(
            refused(&|c| c.environment.allowed_hosts.push("https://x".into()))
                .contains("invalid host")
        );
        assert!(
            refused(&|c| c.environment.networking = Some("open".into())).contains("networking")
        );
        assert!(
            refused(&|c| c.resources.push(Resource {
                kind: "git_repository".into(),
                url: "ssh://h/r".into(),
                mount_path: None,
                branch: None,
                credential: None,
                push_branches: vec![],
            }))
            .contains("must be http(s)")
        );
    }
}
