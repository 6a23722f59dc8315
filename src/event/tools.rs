//! The tool catalogue: the one place that says, for every tool a session can offer its model,
//! what the model is told (name, description, input schema), who runs it, what it may touch
//! and how much of its output is kept. The brain builds tool definitions from it, the fold
//! classifies pending calls with it, the hands check calls against it, and the README's table
//! is checked against it (`tests/docs.rs`).
//!
//! A session's tools are resolved from its log alone ([`offered`]): the agent's configured
//! tools, `get_events` once the session has been compacted, and the tools its MCP servers
//! listed (recorded by `session.mcp_tools_listed`, so a replay never needs the server).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{McpToolsListed, PermissionPolicy, SessionCreated, ToolConfig};

/// Who runs a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runner {
    /// The brain answers it from the session's log: no sandbox, no network.
    Brain,
    /// A hand runs it outside the sandbox (network, vault credentials).
    Hand,
    /// A hand runs it inside the session's sandbox.
    Sandbox,
    /// The client answers it (`user.custom_tool_result`).
    Client,
    /// An MCP server runs it; the hand calls the server, outside the sandbox.
    Mcp,
}

/// A built-in tool: what the model is told, and where it runs.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Its name.
    pub name: &'static str,
    /// What the model is told it does.
    pub description: &'static str,
    /// Its input schema, as JSON text.
    pub schema: &'static str,
    /// Who runs it.
    pub runner: Runner,
    /// What it may touch, for people (the README's table).
    pub touches: &'static str,
    /// How much of its output the model gets, for people.
    pub output: &'static str,
}

impl Builtin {
    /// The input schema.
    pub fn input_schema(&self) -> Value {
        serde_json::from_str(self.schema).unwrap_or_else(|_| serde_json::json!({"type": "object"}))
    }
}

/// The name of the tool the brain answers from the log.
pub const GET_EVENTS: &str = "get_events";

/// Every built-in tool.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "bash",
        description: "Run a bash command in the session's sandbox; returns stdout, stderr and the exit code.",
        schema: r#"{"type": "object", "properties": {"command": {"type": "string"}, "timeout_secs": {"type": "integer"}}, "required": ["command"]}"#,
        runner: Runner::Sandbox,
        touches: "the sandbox: /workspace, no network",
        output: "1 MiB per stream; over 64 KiB stored whole in the object store, head and tail inline",
    },
    Builtin {
        name: "read",
        description: "Read a text file from the sandbox's workspace.",
        schema: r#"{"type": "object", "properties": {"path": {"type": "string"}, "offset": {"type": "integer"}, "limit": {"type": "integer"}}, "required": ["path"]}"#,
        runner: Runner::Sandbox,
        touches: "the sandbox's files",
        output: "as bash",
    },
    Builtin {
        name: "write",
        description: "Write a text file in the sandbox's workspace, replacing it.",
        schema: r#"{"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}, "required": ["path", "content"]}"#,
        runner: Runner::Sandbox,
        touches: "the sandbox's files",
        output: "files up to 1 MiB",
    },
    Builtin {
        name: "edit",
        description: "Replace one exact, unique occurrence of old_string with new_string in a file.",
        schema: r#"{"type": "object", "properties": {"path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"}}, "required": ["path", "old_string", "new_string"]}"#,
        runner: Runner::Sandbox,
        touches: "the sandbox's files",
        output: "files up to 1 MiB",
    },
    Builtin {
        name: "glob",
        description: "List files matching a glob pattern in the workspace.",
        schema: r#"{"type": "object", "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}}, "required": ["pattern"]}"#,
        runner: Runner::Sandbox,
        touches: "the sandbox's files",
        output: "as bash",
    },
    Builtin {
        name: "grep",
        description: "Search file contents for a regular expression in the workspace.",
        schema: r#"{"type": "object", "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}}, "required": ["pattern"]}"#,
        runner: Runner::Sandbox,
        touches: "the sandbox's files",
        output: "as bash",
    },
    Builtin {
        name: "http_request",
        description: "Make an HTTP request from outside the sandbox (the sandbox has no network). Reaches only hosts this session allows. Write {{secret:NAME}} where a credential from the session's vaults belongs (e.g. a header \"Authorization\": \"Bearer {{secret:GITHUB_TOKEN}}\"); the value is filled in outside and never shown to you.",
        schema: r#"{"type": "object", "properties": {"url": {"type": "string"}, "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]}, "headers": {"type": "object", "additionalProperties": {"type": "string"}}, "body": {"type": "string"}, "timeout_secs": {"type": "integer"}}, "required": ["url"]}"#,
        runner: Runner::Hand,
        touches: "allowed hosts and vault credentials' hosts, through the address policy; secrets filled in and redacted by the hand",
        output: "256 KiB of response body",
    },
    Builtin {
        name: "git_remote",
        description: "Push or pull one of this session's git repositories (the sandbox has no network; its remotes hold no token). Commit in the sandbox with bash, then push; pull fast-forwards the checked-out branch, or leaves origin/<branch> fetched for you to merge.",
        schema: r#"{"type": "object", "properties": {"action": {"type": "string", "enum": ["push", "pull"]}, "repository": {"type": "string", "description": "its path under /workspace"}, "branch": {"type": "string"}}, "required": ["action"]}"#,
        runner: Runner::Hand,
        touches: "the session's git resources, with their vault credential, pushes only to allowed branches",
        output: "git's output, as bash",
    },
    Builtin {
        name: GET_EVENTS,
        description: "Read this session's own event log (everything that happened before this call, including what a compaction summarised away), exactly as recorded. Choose events by stream sequence (from, to: inclusive; last: the newest N of what matches), by type (e.g. [\"user.message\", \"agent.tool_result\"]) and by text (a substring of message and tool text, or a regular expression with regex: true). Each event comes back as one line: its sequence, type, time and its fields as JSON. The session's configuration records (session.created, session.mcp_tools_listed) are not shown.",
        schema: r#"{"type": "object", "properties": {"from": {"type": "integer", "minimum": 1}, "to": {"type": "integer", "minimum": 1}, "last": {"type": "integer", "minimum": 1, "maximum": 1000}, "types": {"type": "array", "items": {"type": "string"}}, "text": {"type": "string"}, "regex": {"type": "boolean"}, "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}}"#,
        runner: Runner::Brain,
        touches: "the session's own log before the call (read only); no sandbox, no network",
        output: "64 KiB; a note says where it was cut and how to ask for the rest",
    },
];

/// The built-in tool named `name`.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The names of the built-in tools, for error messages.
pub fn builtin_names() -> String {
    BUILTINS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tool a session offers its model, resolved from its configuration and log.
#[derive(Debug, Clone, PartialEq)]
pub struct Offered {
    /// The name the model calls it by.
    pub name: String,
    /// What the model is told.
    pub description: String,
    /// Its input schema.
    pub input_schema: Value,
    /// Who runs it.
    pub runner: Runner,
    /// Whether a call needs the user's confirmation.
    pub permission_policy: PermissionPolicy,
    /// For an MCP tool: its server.
    pub mcp_server: Option<String>,
}

/// The latest listing of each MCP server, as the log recorded them (`session.mcp_tools_listed`
/// events, oldest first): a later listing of a server replaces an earlier one.
pub fn latest_listings<'a>(
    listings: impl IntoIterator<Item = &'a McpToolsListed>,
) -> Vec<&'a McpToolsListed> {
    let mut out: Vec<&McpToolsListed> = Vec::new();
    for l in listings {
        if l.error.is_some() && out.iter().any(|o| o.mcp_server_name == l.mcp_server_name) {
            // A failed listing never hides the tools a server listed before.
            continue;
        }
        out.retain(|o| o.mcp_server_name != l.mcp_server_name);
        out.push(l);
    }
    out
}

/// The tools a session offers: its agent's built-in and custom tools, `get_events` once it has
/// been compacted (`compacted`), and the enabled tools of each MCP server's latest listing, in
/// the agent's order of toolsets. A name already taken is never offered twice (the first one
/// wins; an MCP tool that clashes is left out). Pure: every brain and hand resolves the same tools from the same log.
pub fn offered(
    config: &SessionCreated,
    compacted: bool,
    listings: &[&McpToolsListed],
) -> Vec<Offered> {
    let mut out: Vec<Offered> = Vec::new();
    for t in &config.agent.tools {
        let offered = match &t.kind {
            ToolType::Builtin => builtin(&t.name).map(|b| Offered {
                name: t.name.clone(),
                description: t
                    .description
                    .clone()
                    .unwrap_or_else(|| b.description.into()),
                input_schema: t.input_schema.clone().unwrap_or_else(|| b.input_schema()),
                runner: b.runner,
                permission_policy: t.permission_policy,
                mcp_server: None,
            }),
            ToolType::Custom => Some(Offered {
                name: t.name.clone(),
                description: t.description.clone().unwrap_or_default(),
                input_schema: t
                    .input_schema
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                runner: Runner::Client,
                permission_policy: PermissionPolicy::AlwaysAllow,
                mcp_server: None,
            }),
            ToolType::McpToolset | ToolType::Other(_) => None,
        };
        if let Some(o) = offered
            && !out.iter().any(|x| x.name == o.name)
        {
            out.push(o);
        }
    }
    if brain_answers(config, compacted, GET_EVENTS) && !out.iter().any(|x| x.name == GET_EVENTS) {
        let b = builtin(GET_EVENTS).expect("in the catalogue");
        out.push(Offered {
            name: b.name.into(),
            description: b.description.into(),
            input_schema: b.input_schema(),
            runner: Runner::Brain,
            permission_policy: PermissionPolicy::AlwaysAllow,
            mcp_server: None,
        });
    }
    // In the agent's order of toolsets, not the log's order of listings: servers are listed
    // concurrently, and the tools (and which of two clashing names wins) must not depend on
    // which listing landed first.
    for toolset in config
        .agent
        .tools
        .iter()
        .filter(|t| t.kind == ToolType::McpToolset)
    {
        let Some(listing) = listings
            .iter()
            .find(|l| toolset.mcp_server_name.as_deref() == Some(l.mcp_server_name.as_str()))
        else {
            continue;
        };
        for tool in &listing.tools {
            let Some(policy) = toolset.mcp_policy(&tool.name) else {
                continue;
            };
            if out.iter().any(|x| x.name == tool.name) {
                continue;
            }
            out.push(Offered {
                name: tool.name.clone(),
                description: tool.description.clone().unwrap_or_default(),
                input_schema: tool.input_schema.clone(),
                runner: Runner::Mcp,
                permission_policy: policy,
                mcp_server: Some(listing.mcp_server_name.clone()),
            });
        }
    }
    out
}

/// True when a call of `name` is one the brain answers from the log: a built-in the catalogue
/// runs on the brain, offered because the agent lists it or (`get_events`) because the session
/// has been compacted. What [`offered`] decides, without building every offered tool (the
/// fold asks it for each call).
pub fn brain_answers(config: &SessionCreated, compacted: bool, name: &str) -> bool {
    builtin(name).is_some_and(|b| b.runner == Runner::Brain)
        && ((compacted && name == GET_EVENTS)
            || config
                .agent
                .tools
                .iter()
                .any(|t| t.name == name && t.kind == ToolType::Builtin))
}

/// A tool entry's type: `builtin`, `custom`, or `mcp_toolset` (the tools of one MCP server).
/// Any other string is kept as it was written (a newer herd's type), so a reader never fails on
/// it; it offers no tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ToolType {
    /// Run by herd (see [`BUILTINS`]).
    Builtin,
    /// Answered by the client.
    Custom,
    /// The tools of an MCP server of the agent's `mcp_servers`.
    McpToolset,
    /// A type this herd does not know.
    Other(String),
}

impl From<String> for ToolType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "builtin" => Self::Builtin,
            "custom" => Self::Custom,
            "mcp_toolset" => Self::McpToolset,
            _ => Self::Other(s),
        }
    }
}

impl From<&str> for ToolType {
    fn from(s: &str) -> Self {
        Self::from(s.to_string())
    }
}

impl From<ToolType> for String {
    fn from(t: ToolType) -> Self {
        t.as_str().to_string()
    }
}

impl ToolType {
    /// The type as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Builtin => "builtin",
            Self::Custom => "custom",
            Self::McpToolset => "mcp_toolset",
            Self::Other(s) => s,
        }
    }
}

impl PartialEq<&str> for ToolType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Whether an MCP tool is offered, and how a call is allowed (the Managed Agents API's
/// `mcp_toolset` `default_config` and per-tool `configs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpToolPolicy {
    /// The tool (in `configs`; absent in `default_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the model is offered it (default: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Whether a call needs the user's confirmation (default: `always_ask`, as in the hosted
    /// API: a server's tools are someone else's code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_policy: Option<PermissionPolicy>,
}

impl ToolConfig {
    /// For an `mcp_toolset` entry: the policy of the server's tool `name`, or `None` when it
    /// is not enabled. A per-tool config overrides the default config field by field.
    pub fn mcp_policy(&self, name: &str) -> Option<PermissionPolicy> {
        let per_tool = self
            .configs
            .iter()
            .find(|c| c.name.as_deref() == Some(name));
        let default = self.default_config.clone().unwrap_or_default();
        let enabled = per_tool
            .and_then(|c| c.enabled)
            .or(default.enabled)
            .unwrap_or(true);
        enabled.then(|| {
            per_tool
                .and_then(|c| c.permission_policy)
                .or(default.permission_policy)
                .unwrap_or(PermissionPolicy::AlwaysAsk)
        })
    }
}

/// One tool an MCP server listed, as recorded in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpTool {
    /// Its name (what the model calls).
    pub name: String,
    /// What the server says it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its input schema.
    pub input_schema: Value,
}

/// An MCP server an agent may use: Streamable HTTP at `url`, authenticated with a vault
/// credential when `credential` names one (the hand fills it in; the model never sees it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServer {
    /// `url` (the only transport herd speaks).
    #[serde(rename = "type", default = "McpServer::url_type")]
    pub kind: String,
    /// Its name, unique in the agent; `mcp_toolset` entries and events name it.
    pub name: String,
    /// Its Streamable HTTP endpoint (`https://…/mcp`; plain http only to loopback).
    pub url: String,
    /// The credential of the session's vaults sent as `Authorization` to this server (and to
    /// nothing else): a bearer token, basic or header credential whose hosts include the
    /// server's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl McpServer {
    fn url_type() -> String {
        "url".into()
    }
}

/// The most MCP servers an agent may name (the hosted API's limit).
pub const MAX_MCP_SERVERS: usize = 20;
/// The most tools herd records of one server's listing.
pub const MAX_MCP_TOOLS: usize = 256;

/// True when `name` can be a tool name the model calls (the Anthropic API's rule:
/// `^[a-zA-Z0-9_-]{1,64}$`).
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AgentConfig;
    use serde_json::json;

    fn listing(server: &str, tools: &[&str], error: Option<&str>) -> McpToolsListed {
        McpToolsListed {
            request_id: format!("mcplist_1_{server}"),
            mcp_server_name: server.into(),
            url: "http://127.0.0.1:1/mcp".into(),
            tools: tools
                .iter()
                .map(|t| McpTool {
                    name: (*t).into(),
                    description: None,
                    input_schema: json!({"type": "object"}),
                })
                .collect(),
            skipped: vec![],
            error: error.map(String::from),
        }
    }

    #[test]
    fn tool_types_keep_unknown_values() {
        let t: ToolType = serde_json::from_value(json!("web_search_2026")).unwrap();
        assert_eq!(t, ToolType::Other("web_search_2026".into()));
        assert_eq!(serde_json::to_value(&t).unwrap(), json!("web_search_2026"));
        assert_eq!(
            serde_json::to_value(ToolType::McpToolset).unwrap(),
            json!("mcp_toolset")
        );
        assert!(ToolType::Custom == "custom");
    }

    #[test]
    fn a_session_offers_its_tools_get_events_after_compaction_and_enabled_mcp_tools() {
        let mut agent = AgentConfig::new("m");
        agent.tools = vec![
            ToolConfig::builtin("bash"),
            serde_json::from_value(json!({"type": "mcp_toolset", "mcp_server_name": "docs",
                "default_config": {"permission_policy": "always_allow"},
                "configs": [{"name": "delete", "enabled": false}, {"name": "write", "permission_policy": "always_ask"}]}))
            .unwrap(),
        ];
        let c = SessionCreated::new(agent);
        let names = |o: &[Offered]| o.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&offered(&c, false, &[])), ["bash"]);
        assert_eq!(names(&offered(&c, true, &[])), ["bash", GET_EVENTS]);
        let l = listing("docs", &["search", "delete", "write", "bash"], None);
        let o = offered(&c, false, &[&l]);
        assert_eq!(
            names(&o),
            ["bash", "search", "write"],
            "disabled and clashing tools are left out"
        );
        assert_eq!(o[1].runner, Runner::Mcp);
        assert_eq!(o[1].permission_policy, PermissionPolicy::AlwaysAllow);
        assert_eq!(o[2].permission_policy, PermissionPolicy::AlwaysAsk);
        // A server no toolset enables offers nothing.
        let other = listing("other", &["x"], None);
        assert_eq!(names(&offered(&c, false, &[&other])), ["bash"]);
    }

    #[test]
    fn mcp_tools_follow_the_agents_toolsets_whichever_listing_landed_first() {
        let mut agent = AgentConfig::new("m");
        let toolset = |server: &str| -> ToolConfig {
            serde_json::from_value(json!({"type": "mcp_toolset", "mcp_server_name": server}))
                .unwrap()
        };
        agent.tools = vec![toolset("docs"), toolset("broken")];
        let c = SessionCreated::new(agent);
        let docs = listing("docs", &["lookup", "shared"], None);
        let broken = listing("broken", &["shared", "fix"], None);
        let names = |o: Vec<Offered>| o.into_iter().map(|t| t.name).collect::<Vec<_>>();
        let want = ["lookup", "shared", "fix"];
        assert_eq!(names(offered(&c, false, &[&docs, &broken])), want);
        assert_eq!(names(offered(&c, false, &[&broken, &docs])), want);
        assert_eq!(
            offered(&c, false, &[&broken, &docs])[1]
                .mcp_server
                .as_deref(),
            Some("docs"),
            "a clash goes to the toolset listed first in the agent"
        );
    }

    #[test]
    fn a_failed_listing_never_hides_an_earlier_one() {
        let ok = listing("docs", &["search"], None);
        let failed = listing("docs", &[], Some("connection refused"));
        let newer = listing("docs", &["search", "fetch"], None);
        assert_eq!(latest_listings([&ok, &failed]), vec![&ok]);
        assert_eq!(latest_listings([&ok, &failed, &newer]), vec![&newer]);
        assert_eq!(latest_listings([&failed]), vec![&failed]);
    }

    #[test]
    fn every_builtin_has_a_schema_that_parses() {
        for b in BUILTINS {
            assert_eq!(b.input_schema()["type"], "object", "{}", b.name);
            assert!(
                serde_json::from_str::<Value>(b.schema).is_ok(),
                "{}",
                b.name
            );
        }
        assert!(valid_tool_name("get_events") && !valid_tool_name("a.b") && !valid_tool_name(""));
    }
}
