//! What the log says about a tool job, decided without I/O: whether the call exists and is
//! still unanswered, what the session allows the tools it runs, and what the model is told
//! about a replaced sandbox. The worker reads the log and acts; these functions decide.

use crate::bus::jobs::{MCP_LIST_TOOLS, ToolJob, mcp_listing_id};
use crate::bus::workspace_jobs;
use crate::event::{
    AgentMcpToolUse, AgentToolUse, EvaluatedPermission, EventBody, McpServer, PermissionPolicy,
    Record, Resource, SessionCreated, ToolConfig, ToolType,
};

/// What a hand should do with a job, given the session's log from the call on.
#[derive(Debug, Clone, PartialEq)]
pub enum JobFate {
    /// The call has a result already (a redelivery after a crash): nothing runs again; the
    /// session only needs waking after this sequence.
    Answered(u64),
    /// Run this call.
    Run(AgentToolUse),
    /// Run this call of an MCP server's tool.
    RunMcp(AgentMcpToolUse),
    /// List the tools of this MCP server (a listing job of a turn whose start is at the
    /// job's sequence).
    ListMcp(String),
    /// Save the session's workspace for this request (see `bus::workspace_jobs`).
    Snapshot(String),
    /// The log has no such call at the job's sequence: the job is refused, never run.
    NotInLog,
}

/// Classifies a job against the log records from its call's sequence on.
pub fn classify(records: &[Record], job: &ToolJob) -> JobFate {
    let records = records.iter().filter_map(|r| r.as_ref().ok());
    if job.name == workspace_jobs::JOB {
        // A turn's request names the `session.status_idle` at its sequence; an on-demand one
        // any event there. Answered once a `sandbox.workspace_saved` names it.
        let Some(turn) = workspace_jobs::request_kind(&job.tool_use_id, job.tool_use_seq) else {
            return JobFate::NotInLog;
        };
        let mut found = false;
        for r in records {
            match &r.event.body {
                EventBody::SandboxWorkspaceSaved(s) if s.request_id == job.tool_use_id => {
                    return JobFate::Answered(r.seq);
                }
                EventBody::SessionStatusIdle(_) if r.seq == job.tool_use_seq => found = true,
                _ if r.seq == job.tool_use_seq && !turn => found = true,
                _ => {}
            }
        }
        return if found {
            JobFate::Snapshot(job.tool_use_id.clone())
        } else {
            JobFate::NotInLog
        };
    }
    if job.name == MCP_LIST_TOOLS {
        // Everything from the log and the id: the server is the one the id names, the turn is
        // the latest one, and the server has no listing that worked since (rule 10: a forged
        // or replayed job can neither pick another server nor list one again).
        let Some(server) = job.input.get("mcp_server_name").and_then(|v| v.as_str()) else {
            return JobFate::NotInLog;
        };
        if job.tool_use_id != mcp_listing_id(job.tool_use_seq, server) {
            return JobFate::NotInLog;
        }
        let mut turn = false;
        for r in records {
            match &r.event.body {
                EventBody::SessionStatusRunning(_) if r.seq == job.tool_use_seq => turn = true,
                EventBody::SessionStatusRunning(_) if r.seq > job.tool_use_seq => {
                    return JobFate::NotInLog;
                }
                EventBody::McpToolsListed(l) if l.request_id == job.tool_use_id => {
                    return JobFate::Answered(r.seq);
                }
                EventBody::McpToolsListed(l)
                    if l.mcp_server_name == server && l.error.is_none() =>
                {
                    return JobFate::Answered(r.seq);
                }
                _ => {}
            }
        }
        return if turn {
            JobFate::ListMcp(server.to_string())
        } else {
            JobFate::NotInLog
        };
    }
    let mut call = None;
    for r in records {
        match &r.event.body {
            EventBody::AgentToolUse(u)
                if u.tool_use_id == job.tool_use_id && r.seq == job.tool_use_seq =>
            {
                call = Some(JobFate::Run(u.clone()))
            }
            EventBody::AgentMcpToolUse(u)
                if u.tool_use_id == job.tool_use_id && r.seq == job.tool_use_seq =>
            {
                call = Some(JobFate::RunMcp(u.clone()))
            }
            EventBody::AgentToolResult(res) if res.tool_use_id == job.tool_use_id => {
                return JobFate::Answered(r.seq);
            }
            EventBody::AgentMcpToolResult(res) if res.mcp_tool_use_id == job.tool_use_id => {
                return JobFate::Answered(r.seq);
            }
            _ => {}
        }
    }
    call.unwrap_or(JobFate::NotInLog)
}

/// Whether the user allowed the call `tool_use_id`: its first confirmation (as the fold takes
/// it) among `records`.
fn confirmed(records: &[Record], tool_use_id: &str) -> bool {
    records
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .find_map(|r| match &r.event.body {
            EventBody::UserToolConfirmation(c) if c.tool_use_id == tool_use_id => {
                Some(c.result == "allow")
            }
            _ => None,
        })
        .unwrap_or(false)
}

/// Whether a call the brain evaluated as `evaluated` may run under `policy`, given the user's
/// answer: the session's policy, not only the brain's claim (an always_ask tool runs only once
/// the user allowed the call).
fn permitted(
    policy: PermissionPolicy,
    evaluated: Option<EvaluatedPermission>,
    confirmed: bool,
) -> bool {
    let must_ask = policy == PermissionPolicy::AlwaysAsk;
    match evaluated {
        Some(EvaluatedPermission::Allow) => !must_ask || confirmed,
        Some(EvaluatedPermission::Ask) => confirmed,
        _ => false,
    }
}

/// Decides whether the hand may run the MCP call `call`, from the log alone: its server must
/// be one of the session's, with a toolset that enables the tool, and the call allowed under
/// the toolset's policy. Returns the server.
pub fn authorize_mcp(
    access: &SessionAccess,
    call: &AgentMcpToolUse,
    records: &[Record],
) -> Result<McpServer, String> {
    let server = access
        .mcp_servers
        .iter()
        .find(|s| s.name == call.mcp_server_name)
        .ok_or_else(|| {
            format!(
                "This session has no MCP server {:?}; the hand ran nothing.",
                call.mcp_server_name
            )
        })?;
    let policy = access
        .tools
        .iter()
        .find(|t| {
            t.kind == ToolType::McpToolset && t.mcp_server_name.as_deref() == Some(&server.name)
        })
        .and_then(|t| t.mcp_policy(&call.name))
        .ok_or_else(|| {
            format!(
                "The MCP server {:?}'s tool {:?} is not enabled for this session; the hand ran nothing.",
                server.name, call.name
            )
        })?;
    if !permitted(
        policy,
        call.evaluated_permission,
        confirmed(records, &call.tool_use_id),
    ) {
        return Err(format!(
            "The call {} was not allowed (it waits for, or was refused, a confirmation); the hand ran nothing.",
            call.tool_use_id
        ));
    }
    Ok(server.clone())
}

/// The sequence of the result of `tool_use_id` among `records`, if one is there.
pub fn result_seq(records: &[Record], tool_use_id: &str) -> Option<u64> {
    records
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .find_map(|r| match &r.event.body {
            EventBody::AgentToolResult(res) if res.tool_use_id == tool_use_id => Some(r.seq),
            EventBody::AgentMcpToolResult(res) if res.mcp_tool_use_id == tool_use_id => Some(r.seq),
            _ => None,
        })
}

/// What a session allows the tools a hand runs for it, from its configuration.
#[derive(Debug, Clone, Default)]
pub struct SessionAccess {
    /// The vaults it may use, in lookup order.
    pub vault_ids: Vec<String>,
    /// Hosts it may reach without a credential.
    pub allowed_hosts: Vec<String>,
    /// Its git repositories.
    pub resources: Vec<Resource>,
    /// True when its sandbox may reach `allowed_hosts` through the egress proxy.
    pub egress: bool,
    /// Its agent's tools.
    pub tools: Vec<ToolConfig>,
    /// Its agent's MCP servers.
    pub mcp_servers: Vec<McpServer>,
    /// Its sandbox image, when its environment names one.
    pub image: Option<String>,
}

impl SessionAccess {
    /// The access a session's `session.created` grants.
    pub fn from_created(c: &SessionCreated) -> Self {
        Self {
            vault_ids: c.vault_ids.clone(),
            resources: c.resources.clone(),
            egress: c.environment.networking.as_deref() == Some("limited"),
            allowed_hosts: c.environment.allowed_hosts.clone(),
            tools: c.agent.tools.clone(),
            mcp_servers: c.agent.mcp_servers.clone(),
            image: c.environment.image.clone(),
        }
    }

    /// The access of the session whose first `session.created` is among `records`; none
    /// (no vaults, hosts or repositories) when there is none.
    pub fn from_records(records: &[Record]) -> Self {
        records
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .find_map(|r| match &r.event.body {
                EventBody::SessionCreated(c) => Some(Self::from_created(c)),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// What a hand takes from the deployment, not from a job: its default image and the images
/// sessions may name.
#[derive(Debug, Clone)]
pub struct ImagePolicy {
    /// The image of sessions whose environment names none (always allowed).
    pub default_image: String,
    /// The other images sessions may name.
    pub allowed: Vec<String>,
}

/// Decides whether the hand may run `call` for `job`, from the log alone (DESIGN rule 10:
/// image, tools and permissions come from `session.created` and the log, never from the
/// job): the tool must be one of the session's built-in tools, the call allowed when the brain
/// made it or allowed by the user since (`records` runs from the call on), and the image the
/// session's, on the deployment's allow-list. Returns the image to run in, or why not (a
/// tool error the model sees; the call is never run).
pub fn authorize(
    access: &SessionAccess,
    job: &ToolJob,
    call: &AgentToolUse,
    records: &[Record],
    images: &ImagePolicy,
) -> Result<String, String> {
    let Some(tool) = access
        .tools
        .iter()
        .find(|t| t.name == call.name && t.kind == "builtin")
    else {
        return Err(format!(
            "This session has no built-in tool {:?}; the hand ran nothing.",
            call.name
        ));
    };
    if crate::event::tools::builtin(&call.name)
        .is_some_and(|b| b.runner == crate::event::Runner::Brain)
    {
        return Err(format!(
            "{:?} is answered by the brain from the log, never by a hand; the hand ran nothing.",
            call.name
        ));
    }
    if !permitted(
        tool.permission_policy,
        call.evaluated_permission,
        confirmed(records, &call.tool_use_id),
    ) {
        return Err(format!(
            "The call {} was not allowed (it waits for, or was refused, a confirmation); the hand ran nothing.",
            call.tool_use_id
        ));
    }
    let image = access
        .image
        .clone()
        .unwrap_or_else(|| images.default_image.clone());
    if let Some(asked) = &job.image
        && *asked != image
    {
        return Err(format!(
            "The job names image {asked:?}, but this session's image is {image:?}; the hand ran nothing."
        ));
    }
    if image != images.default_image && !images.allowed.contains(&image) {
        return Err(format!(
            "The sandbox image {image:?} is not on this deployment's allow-list; no tool can run until an operator allows it (herd hands --allow-image)."
        ));
    }
    Ok(image)
}

/// The host of the latest `sandbox.provisioned` among `records`.
pub fn previous_host(records: &[Record]) -> Option<String> {
    records
        .iter()
        .rev()
        .find_map(|r| match &r.as_ref().ok()?.event.body {
            EventBody::SandboxProvisioned(p) => Some(p.host.clone()),
            _ => None,
        })
}

/// What the model is told when a fresh sandbox starts with a new, empty workspace volume and
/// the session had a sandbox before, with no snapshot to restore.
pub fn empty_workspace_note(previous_host: &str, this_host: &str) -> String {
    if previous_host == this_host {
        "Note: this session's sandbox and its workspace volume are gone and it has no workspace snapshot; this call ran in a fresh sandbox, so files written before are not here.".to_string()
    } else {
        replaced_sandbox_note(previous_host, this_host)
    }
}

/// What the model is told when a fresh sandbox replaces the session's earlier one over the
/// same workspace volume (same host), or on another host with no snapshot to restore.
pub fn replaced_sandbox_note(previous_host: &str, this_host: &str) -> String {
    if previous_host == this_host {
        "Note: this session's sandbox was replaced by a fresh one. Files in /workspace were kept; processes and files elsewhere are gone.".to_string()
    } else {
        format!(
            "Note: this session's sandbox (on host {previous_host}) is gone; this call ran in a fresh sandbox on another host, so files written before are not here."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        AgentConfig, AgentToolResult, ContentBlock, EnvironmentConfig, Event, SandboxProvisioned,
        SessionId, StoredEvent,
    };

    fn at(seq: u64, body: impl Into<EventBody>) -> Record {
        Ok(StoredEvent {
            session_id: SessionId::parse("s1").unwrap(),
            seq,
            event: Event::new(body.into()),
        })
    }

    fn call(id: &str) -> AgentToolUse {
        AgentToolUse {
            tool_use_id: id.into(),
            name: "bash".into(),
            input: serde_json::json!({"command": "true"}),
            evaluated_permission: None,
        }
    }

    fn result(id: &str) -> AgentToolResult {
        AgentToolResult {
            tool_use_id: id.into(),
            content: vec![ContentBlock::text("ok")],
            is_error: false,
            output_ref: None,
        }
    }

    fn job(id: &str, seq: u64) -> ToolJob {
        ToolJob {
            session_id: SessionId::parse("s1").unwrap(),
            tool_use_id: id.into(),
            name: "bash".into(),
            input: serde_json::json!({}),
            tool_use_seq: seq,
            image: None,
        }
    }

    fn listed(request_id: &str, server: &str, error: Option<&str>) -> crate::event::McpToolsListed {
        crate::event::McpToolsListed {
            request_id: request_id.into(),
            mcp_server_name: server.into(),
            url: "https://x/mcp".into(),
            tools: vec![],
            skipped: vec![],
            error: error.map(String::from),
        }
    }

    #[test]
    fn a_listing_job_names_its_server_and_turn_in_its_id_and_runs_once() {
        let list = |id: &str, seq: u64, server: &str| ToolJob {
            name: MCP_LIST_TOOLS.into(),
            input: serde_json::json!({"mcp_server_name": server}),
            ..job(id, seq)
        };
        let running = || crate::event::SessionStatusRunning {};
        let log = vec![at(5, running())];
        assert_eq!(
            classify(&log, &list("mcplist_5_docs", 5, "docs")),
            JobFate::ListMcp("docs".into())
        );
        // Another server than the id names, another turn, or no turn at all: refused.
        assert_eq!(
            classify(&log, &list("mcplist_5_docs", 5, "other")),
            JobFate::NotInLog
        );
        assert_eq!(
            classify(&log, &list("mcplist_4_docs", 5, "docs")),
            JobFate::NotInLog
        );
        assert_eq!(
            classify(&[at(5, result("x"))], &list("mcplist_5_docs", 5, "docs")),
            JobFate::NotInLog
        );
        // A turn that is no longer the latest: refused (its own listing job is newer).
        let moved = vec![at(5, running()), at(9, running())];
        assert_eq!(
            classify(&moved, &list("mcplist_5_docs", 5, "docs")),
            JobFate::NotInLog
        );
        // Answered by its record, or by any listing of the server that worked since.
        let done = vec![
            at(5, running()),
            at(6, listed("mcplist_5_docs", "docs", Some("down"))),
        ];
        assert_eq!(
            classify(&done, &list("mcplist_5_docs", 5, "docs")),
            JobFate::Answered(6)
        );
        let worked = vec![
            at(5, running()),
            at(7, listed("mcplist_3_docs", "docs", None)),
        ];
        assert_eq!(
            classify(&worked, &list("mcplist_5_docs", 5, "docs")),
            JobFate::Answered(7)
        );
    }

    #[test]
    fn an_mcp_call_runs_only_when_its_toolset_enables_and_allows_it() {
        let access = SessionAccess {
            mcp_servers: vec![McpServer {
                kind: "url".into(),
                name: "docs".into(),
                url: "https://x/mcp".into(),
                credential: None,
            }],
            tools: vec![
                serde_json::from_value(serde_json::json!({"type": "mcp_toolset", "mcp_server_name": "docs",
                    "configs": [{"name": "off", "enabled": false}, {"name": "free", "permission_policy": "always_allow"}]}))
                .unwrap(),
            ],
            ..Default::default()
        };
        let call = |name: &str, server: &str, p: Option<EvaluatedPermission>| AgentMcpToolUse {
            tool_use_id: "t1".into(),
            mcp_server_name: server.into(),
            name: name.into(),
            input: serde_json::json!({}),
            evaluated_permission: p,
        };
        let allow = Some(EvaluatedPermission::Allow);
        assert!(authorize_mcp(&access, &call("free", "docs", allow), &[]).is_ok());
        let refused = |c: AgentMcpToolUse, records: &[Record]| {
            authorize_mcp(&access, &c, records).unwrap_err()
        };
        assert!(refused(call("free", "other", allow), &[]).contains("no MCP server"));
        assert!(refused(call("off", "docs", allow), &[]).contains("not enabled"));
        // The default policy of a server's tools is always_ask: the brain's claim is not enough.
        assert!(refused(call("other", "docs", allow), &[]).contains("not allowed"));
        let yes = at(
            9,
            crate::event::UserToolConfirmation {
                tool_use_id: "t1".into(),
                result: "allow".into(),
                deny_message: None,
            },
        );
        assert!(
            authorize_mcp(
                &access,
                &call("other", "docs", Some(EvaluatedPermission::Ask)),
                &[yes]
            )
            .is_ok()
        );
    }

    #[test]
    fn a_job_runs_only_the_call_the_log_has_at_its_sequence() {
        let log = vec![at(4, call("t1")), at(5, call("t2"))];
        assert_eq!(classify(&log, &job("t1", 4)), JobFate::Run(call("t1")));
        assert_eq!(classify(&log, &job("t1", 5)), JobFate::NotInLog);
        assert_eq!(classify(&log, &job("t9", 4)), JobFate::NotInLog);
        assert_eq!(classify(&[], &job("t1", 4)), JobFate::NotInLog);
    }

    #[test]
    fn an_answered_call_never_runs_again() {
        let log = vec![at(4, call("t1")), at(6, result("t2")), at(7, result("t1"))];
        assert_eq!(classify(&log, &job("t1", 4)), JobFate::Answered(7));
        assert_eq!(result_seq(&log, "t1"), Some(7));
        assert_eq!(result_seq(&log, "t3"), None);
    }

    #[test]
    fn access_comes_from_the_first_session_created() {
        let created = |hosts: &[&str], networking: Option<&str>| SessionCreated {
            environment: EnvironmentConfig {
                image: None,
                allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
                networking: networking.map(String::from),
            },
            vault_ids: vec!["v1".into()],
            ..SessionCreated::new(AgentConfig::new("m"))
        };
        let log = vec![
            at(1, created(&["a.example"], Some("limited"))),
            at(2, created(&["b.example"], None)),
        ];
        let a = SessionAccess::from_records(&log);
        assert_eq!(a.allowed_hosts, vec!["a.example".to_string()]);
        assert!(a.egress);
        assert_eq!(a.vault_ids, vec!["v1".to_string()]);
        assert!(SessionAccess::from_records(&[]).vault_ids.is_empty());
    }

    fn access(image: Option<&str>) -> SessionAccess {
        SessionAccess {
            tools: vec![ToolConfig {
                name: "bash".into(),
                kind: "builtin".into(),
                description: None,
                input_schema: None,
                permission_policy: crate::event::PermissionPolicy::AlwaysAllow,
                mcp_server_name: None,
                default_config: None,
                configs: Vec::new(),
            }],
            image: image.map(String::from),
            ..Default::default()
        }
    }

    fn images() -> ImagePolicy {
        ImagePolicy {
            default_image: "herd-sandbox:debian".into(),
            allowed: vec!["herd-sandbox:busybox".into()],
        }
    }

    fn allowed(name: &str, permission: Option<EvaluatedPermission>) -> AgentToolUse {
        AgentToolUse {
            name: name.into(),
            evaluated_permission: permission,
            ..call("t1")
        }
    }

    #[test]
    fn the_hand_runs_only_what_the_log_allows() {
        let ok = allowed("bash", Some(EvaluatedPermission::Allow));
        let j = job("t1", 4);
        assert_eq!(
            authorize(&access(None), &j, &ok, &[], &images()).as_deref(),
            Ok("herd-sandbox:debian")
        );
        let other_tool = allowed("http_request", Some(EvaluatedPermission::Allow));
        let e = authorize(&access(None), &j, &other_tool, &[], &images()).unwrap_err();
        assert!(e.contains("no built-in tool \"http_request\""), "{e}");
        let asked = allowed("bash", Some(EvaluatedPermission::Ask));
        assert!(authorize(&access(None), &j, &asked, &[], &images()).is_err());
        let yes = at(
            6,
            crate::event::UserToolConfirmation {
                tool_use_id: "t1".into(),
                result: "allow".into(),
                deny_message: None,
            },
        );
        assert!(authorize(&access(None), &j, &asked, &[yes], &images()).is_ok());
        assert!(authorize(&access(None), &j, &allowed("bash", None), &[], &images()).is_err());
        // An always_ask tool needs the user's allow, whatever the call claims.
        let mut ask = access(None);
        ask.tools[0].permission_policy = crate::event::PermissionPolicy::AlwaysAsk;
        assert!(authorize(&ask, &j, &ok, &[], &images()).is_err());
        let answer = |seq, result: &str| {
            at(
                seq,
                crate::event::UserToolConfirmation {
                    tool_use_id: "t1".into(),
                    result: result.into(),
                    deny_message: None,
                },
            )
        };
        assert!(authorize(&ask, &j, &ok, &[answer(6, "allow")], &images()).is_ok());
        let first_no = [answer(6, "deny"), answer(7, "allow")];
        assert!(
            authorize(&ask, &j, &ok, &first_no, &images()).is_err(),
            "the first answer counts"
        );
    }

    #[test]
    fn the_image_is_the_sessions_and_on_the_allow_list() {
        let ok = allowed("bash", Some(EvaluatedPermission::Allow));
        let mut j = job("t1", 4);
        assert_eq!(
            authorize(
                &access(Some("herd-sandbox:busybox")),
                &j,
                &ok,
                &[],
                &images()
            )
            .as_deref(),
            Ok("herd-sandbox:busybox")
        );
        let e = authorize(&access(Some("evil:latest")), &j, &ok, &[], &images()).unwrap_err();
        assert!(e.contains("not on this deployment's allow-list"), "{e}");
        j.image = Some("herd-sandbox:busybox".into());
        let e = authorize(&access(None), &j, &ok, &[], &images()).unwrap_err();
        assert!(e.contains("names image"), "{e}");
    }

    #[test]
    fn the_model_is_told_what_survived_a_replaced_sandbox() {
        let p = |host: &str| SandboxProvisioned {
            host: host.into(),
            image: "i".into(),
            container: "c".into(),
            volume: None,
            from_pool: false,
        };
        assert_eq!(
            previous_host(&[at(1, p("h1")), at(2, p("h2"))]).as_deref(),
            Some("h2")
        );
        assert!(replaced_sandbox_note("h1", "h1").contains("were kept"));
        assert!(replaced_sandbox_note("h1", "h2").contains("are not here"));
    }
}
