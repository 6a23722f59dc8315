//! `herd session …`: create sessions, send them events, read their logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use futures_util::StreamExt;
use herd::api::{Api, Principal, Sent};
use herd::event::{
    AgentConfig, EnvironmentConfig, Event, EventId, PermissionPolicy, SessionCreated, SessionId,
    ToolConfig,
};
use herd::session::{SessionLog, Slice};

use super::output;

/// The model a session gets when none is named.
const DEFAULT_MODEL: &str = "claude-sonnet-4-5";

// Parsed once per process; boxing `Create`'s flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum SessionCmd {
    /// Create a session; prints its id.
    Create {
        /// The session id (letters, digits, '-' and '_'); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// The agent's configuration, as JSON or TOML (model, system, tools, max_tokens, …);
        /// the flags below override its fields.
        #[arg(long)]
        agent: Option<PathBuf>,
        /// The model [default: claude-sonnet-4-5].
        #[arg(long)]
        model: Option<String>,
        /// The system prompt.
        #[arg(long)]
        system: Option<String>,
        /// The sandbox image of the session's environment.
        #[arg(long)]
        image: Option<String>,
        /// A title for people.
        #[arg(long)]
        title: Option<String>,
        /// Metadata as key=value (repeatable).
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// The model provider: anthropic, openai or scripted [default: from the model name].
        #[arg(long)]
        provider: Option<String>,
        /// A built-in tool the agent may use (repeatable): bash, read, write, edit, glob, grep,
        /// http_request, git_remote; append `:ask` to require the user's confirmation for each call
        /// (bash:ask).
        #[arg(long = "tool", value_name = "NAME[:ask]")]
        tools: Vec<String>,
        /// A vault whose credentials the session's http_request calls may use as
        /// {{secret:NAME}} (repeatable; looked up in this order).
        #[arg(long = "vault", value_name = "VAULT")]
        vaults: Vec<String>,
        /// A host http_request may reach without a credential: host or host:port (repeatable).
        #[arg(long = "allow-host", value_name = "HOST")]
        allow_hosts: Vec<String>,
        /// A git repository to clone into the workspace (repeatable):
        /// URL[,credential=NAME][,path=DIR][,branch=B]; NAME is a git credential in one of the
        /// session's vaults. Push and pull with the git_remote tool.
        #[arg(
            long = "repo",
            value_name = "URL[,credential=NAME][,path=DIR][,branch=B]"
        )]
        repos: Vec<String>,
        /// The sandbox's network: none (the default) or limited (an HTTP(S) proxy to the
        /// --allow-host hosts only, for package installs).
        #[arg(long, value_parser = ["none", "limited"])]
        networking: Option<String>,
        /// A limit (repeatable): model_requests_per_turn, model_requests, tool_calls_per_turn,
        /// tool_calls, output_tokens_per_turn, output_tokens or wall_seconds_per_turn, as
        /// NAME=N. Reaching one pauses the session (stop_reason budget_reached) until it is
        /// raised or a new turn starts.
        #[arg(long = "limit", value_name = "NAME=N")]
        limits: Vec<String>,
        /// The cost budget, in US cents at the model's list price (the Managed Agents API's
        /// max_list_cost): checked before each model request; at it the session pauses
        /// (budget_reached). Only models with a list price (built in, or [prices] in herd.toml).
        #[arg(long, value_name = "CENTS")]
        budget_usd_cents: Option<String>,
    },
    /// Replace a session's limits, raise or remove its budget (e.g. the one that paused it);
    /// send a message to resume it.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["limits", "budget_usd_cents", "no_budget"])))]
    Update {
        /// The session.
        id: String,
        /// A limit (repeatable), NAME=N; the limits given replace the session's whole set
        /// (the budget is kept).
        #[arg(long = "limit", value_name = "NAME=N")]
        limits: Vec<String>,
        /// A new budget in US cents: at least what the session has spent; only a session
        /// created with a budget has one to raise.
        #[arg(long, value_name = "CENTS", conflicts_with = "no_budget")]
        budget_usd_cents: Option<String>,
        /// Remove the budget, for good.
        #[arg(long)]
        no_budget: bool,
    },
    /// Append a user message to a session and wake it.
    Send {
        /// The session.
        id: String,
        /// The message.
        text: String,
        /// The event id, to make retries of this command idempotent; generated when absent.
        #[arg(long)]
        event_id: Option<String>,
        /// Print the session's new events until the turn ends (the session goes idle).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Stop a session's running turn at the next step boundary.
    Interrupt {
        /// The session.
        id: String,
    },
    /// Allow or deny a tool call that waits for confirmation.
    Confirm {
        /// The session.
        id: String,
        /// The tool_use id (from the agent.tool_use event).
        tool_use_id: String,
        /// allow or deny.
        #[arg(value_parser = ["allow", "deny"])]
        decision: String,
        /// For a denial: what the model is told.
        #[arg(long)]
        message: Option<String>,
    },
    /// Answer a custom tool call.
    ToolResult {
        /// The session.
        id: String,
        /// The tool_use id (from the agent.custom_tool_use event).
        tool_use_id: String,
        /// The result text.
        text: String,
        /// The tool failed.
        #[arg(long)]
        error: bool,
    },
    /// Print a session's events.
    Events {
        /// The session.
        id: String,
        /// From this stream sequence on.
        #[arg(long)]
        from: Option<u64>,
        /// Up to this stream sequence.
        #[arg(long)]
        to: Option<u64>,
        /// At most this many events.
        #[arg(long, conflicts_with = "last")]
        limit: Option<usize>,
        /// Only the last N events.
        #[arg(long)]
        last: Option<usize>,
        /// Only events of this type (repeatable), e.g. `--type user.message`.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Keep printing new events as they land.
        #[arg(long, conflicts_with_all = ["to", "limit", "last"])]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a session's current state (folded from its log).
    Show {
        /// The session.
        id: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fork a session: a new session whose log is the parent's up to its last turn boundary
    /// at or before --at (default: its last event), with the workspace snapshot of that point.
    /// The parent is untouched. Rewinding is forking at an earlier sequence.
    Fork {
        /// The parent session.
        id: String,
        /// The parent's sequence to fork at (moved back to the turn boundary before it).
        #[arg(long)]
        at: Option<u64>,
    },
    /// Save a session's workspace now (to the object store); prints the snapshot.
    Snapshot {
        /// The session.
        id: String,
        /// Give up waiting for the hand after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Wake a session on a schedule, durably (it survives restarts of nats-server and of every
    /// worker); each firing appends the prompt as a user message. Setting a name again
    /// replaces that schedule.
    Schedule {
        /// The session.
        id: String,
        /// The schedule's name (letters, digits, '-' and '_'), unique in the session.
        name: String,
        /// When: "at 2026-12-24T18:00:00Z", "in 10m", "every 1h" (at least 60 s) or
        /// "cron 0 30 9 * * MON-FRI" (6 fields, seconds first, UTC).
        #[arg(long)]
        when: String,
        /// What the session is told when it fires.
        #[arg(long)]
        prompt: String,
    },
    /// List a session's scheduled wakes.
    Schedules {
        /// The session.
        id: String,
        /// As JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a session's scheduled wake: it never fires again.
    Unschedule {
        /// The session.
        id: String,
        /// The schedule's name.
        name: String,
    },
    /// List sessions with their event counts.
    List {
        /// As JSON lines.
        #[arg(long)]
        json: bool,
    },
}

/// `URL[,credential=NAME][,path=DIR][,branch=B][,push=PATTERN]…` as a git resource.
fn parse_repo(spec: &str) -> anyhow::Result<herd::event::Resource> {
    let mut parts = spec.split(',');
    let mut r = herd::event::Resource {
        kind: "git_repository".into(),
        url: parts.next().unwrap_or("").trim().to_string(),
        mount_path: None,
        branch: None,
        credential: None,
        push_branches: Vec::new(),
    };
    for p in parts {
        match p.split_once('=') {
            Some(("credential", v)) => r.credential = Some(v.to_string()),
            Some(("path", v)) => r.mount_path = Some(v.to_string()),
            Some(("branch", v)) => r.branch = Some(v.to_string()),
            Some(("push", v)) => r.push_branches.push(v.to_string()),
            _ => bail!("--repo {spec:?}: unknown part {p:?} (credential=, path=, branch=, push=)"),
        }
    }
    r.check()
        .map_err(|e| anyhow::anyhow!("--repo {spec:?}: {e}"))?;
    Ok(r)
}

/// `NAME=N` limits.
fn parse_limits(specs: &[String]) -> anyhow::Result<herd::event::SessionLimits> {
    let mut limits = herd::event::SessionLimits::default();
    for spec in specs {
        let Some((name, value)) = spec.split_once('=') else {
            bail!("--limit {spec:?} is not NAME=N");
        };
        let value: u64 = value
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--limit {spec:?}: {value:?} is not a whole number"))?;
        limits.set(name.trim(), value)?;
    }
    Ok(limits)
}

fn parse_session(id: &str) -> anyhow::Result<SessionId> {
    SessionId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))
}

fn load_agent(path: &Path) -> anyhow::Result<AgentConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}", e.message()))
    } else {
        serde_json::from_str(&text).map_err(anyhow::Error::from)
    };
    parsed.with_context(|| format!("{} is not a valid agent configuration", path.display()))
}

/// Prints a session's events from `from` on until one ends the turn (an idle or a
/// termination).
async fn wait_for_idle(
    log: &SessionLog,
    id: &SessionId,
    from: u64,
    timeout_secs: u64,
) -> anyhow::Result<()> {
    let mut live = log.follow(id, from).await?;
    let deadline = std::time::Duration::from_secs(timeout_secs);
    let result = tokio::time::timeout(deadline, async {
        while let Some(r) = live.next().await {
            let r = r?;
            output::print_record(&r, false);
            if matches!(
                output::type_of(&r),
                "session.status_idle" | "session.status_terminated"
            ) {
                return Ok::<_, anyhow::Error>(());
            }
        }
        Ok(())
    })
    .await;
    match result {
        Ok(r) => r,
        Err(_) => bail!(
            "the session did not go idle within {timeout_secs} s (is a `herd brain` running?)"
        ),
    }
}

/// Prints where an event sent to a session landed.
fn print_sent(event: &Event, sent: Sent) {
    let note = if sent.duplicate {
        " (already there)"
    } else {
        ""
    };
    println!("{} at sequence {}{note}", event.id, sent.seq);
}

/// A `--budget-usd-cents` value as a budget (its amount checked by the library, with the
/// library's message).
fn budget(cents: &str) -> herd::event::Budget {
    let mut b = herd::event::Budget::usd_cents(0);
    b.max_list_cost.amount = cents.to_string();
    b
}

pub async fn run(
    client: async_nats::Client,
    cmd: SessionCmd,
    prices: herd::event::PriceTable,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let api = Api::open(client, Principal::operator())
        .await?
        .with_prices(prices);
    let log = api.log();
    match cmd {
        SessionCmd::Create {
            id,
            agent,
            model,
            system,
            image,
            title,
            metadata,
            provider,
            tools,
            vaults,
            allow_hosts,
            repos,
            networking,
            limits,
            budget_usd_cents,
        } => {
            let mut limits = parse_limits(&limits)?;
            limits.budget = budget_usd_cents.as_deref().map(budget);
            let resources = repos
                .iter()
                .map(|r| parse_repo(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let id = match id {
                Some(id) => parse_session(&id)?,
                None => SessionId::generate(),
            };
            let mut agent = match agent {
                Some(path) => load_agent(&path)?,
                None => AgentConfig::new(DEFAULT_MODEL),
            };
            if let Some(m) = model {
                agent.model = m;
            }
            if system.is_some() {
                agent.system = system;
            }
            if provider.is_some() {
                agent.provider = provider;
            }
            for t in tools {
                let (name, ask) = match t.split_once(':') {
                    Some((n, "ask")) => (n, true),
                    Some((_, other)) => bail!("tool {t:?}: unknown option {other:?} (only :ask)"),
                    None => (t.as_str(), false),
                };
                agent.tools.push(ToolConfig {
                    permission_policy: if ask {
                        PermissionPolicy::AlwaysAsk
                    } else {
                        PermissionPolicy::AlwaysAllow
                    },
                    ..ToolConfig::builtin(name)
                });
            }
            let mut meta = BTreeMap::new();
            for kv in metadata {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("metadata {kv:?} is not KEY=VALUE");
                };
                meta.insert(k.to_string(), v.to_string());
            }
            let created = SessionCreated {
                environment: EnvironmentConfig {
                    image,
                    allowed_hosts: allow_hosts,
                    networking,
                },
                title,
                metadata: meta,
                vault_ids: vaults,
                resources,
                limits,
                ..SessionCreated::new(agent)
            };
            api.create(&id, created).await?;
            println!("{id}");
        }
        SessionCmd::Send {
            id,
            text,
            event_id,
            wait,
            timeout_secs,
        } => {
            let event_id = event_id
                .map(|e| EventId::parse(e).map_err(|e| anyhow::anyhow!("{e}")))
                .transpose()?;
            let id = parse_session(&id)?;
            let (event, sent) = api.message(&id, event_id, &text).await?;
            print_sent(&event, sent);
            if wait {
                wait_for_idle(log, &id, sent.seq + 1, timeout_secs).await?;
            }
        }
        SessionCmd::Update {
            id,
            limits,
            budget_usd_cents,
            no_budget,
        } => {
            let limits = (!limits.is_empty())
                .then(|| parse_limits(&limits))
                .transpose()?;
            let budget = match (budget_usd_cents, no_budget) {
                (Some(c), _) => Some(Some(budget(&c))),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let (event, sent) = api.update(&parse_session(&id)?, limits, budget).await?;
            print_sent(&event, sent);
        }
        SessionCmd::Interrupt { id } => {
            let (event, sent) = api.interrupt(&parse_session(&id)?).await?;
            print_sent(&event, sent);
        }
        SessionCmd::Confirm {
            id,
            tool_use_id,
            decision,
            message,
        } => {
            let (event, sent) = api
                .confirm(
                    &parse_session(&id)?,
                    &tool_use_id,
                    decision == "allow",
                    message,
                )
                .await?;
            print_sent(&event, sent);
        }
        SessionCmd::ToolResult {
            id,
            tool_use_id,
            text,
            error,
        } => {
            let (event, sent) = api
                .answer_custom_tool(&parse_session(&id)?, &tool_use_id, &text, error)
                .await?;
            print_sent(&event, sent);
        }
        SessionCmd::Events {
            id,
            from,
            to,
            limit,
            last,
            types,
            follow,
            json,
        } => {
            let id = parse_session(&id)?;
            let slice = Slice {
                from,
                to,
                last,
                types: types.clone(),
                limit,
            };
            let records = log.read(&id, &slice).await?;
            if records.is_empty() && !follow && log.last_sequence(&id).await? == 0 {
                bail!("session {id} does not exist");
            }
            let mut next = from.unwrap_or(1);
            for r in &records {
                next = output::seq_of(r) + 1;
                output::print_record(r, json);
            }
            if follow {
                let mut live = log.follow(&id, next).await?;
                while let Some(r) = live.next().await {
                    let r = r?;
                    let t = output::type_of(&r);
                    if types.is_empty() || types.iter().any(|x| x == t) {
                        output::print_record(&r, json);
                    }
                }
            }
        }
        SessionCmd::Show { id, json } => {
            let id = parse_session(&id)?;
            let state = api.state(&id).await?;
            if json {
                println!(
                    "{}",
                    output::json_text(serde_json::to_string_pretty(&state)?)
                );
            } else {
                print!("{}", output::state_text(&state));
            }
        }
        SessionCmd::Fork { id, at } => {
            let id = parse_session(&id)?;
            let f = api.fork(&id, at).await?;
            let moved = if f.forked.at == f.forked.requested {
                String::new()
            } else {
                format!(
                    " (asked at {}; the last turn boundary at or before it)",
                    f.forked.requested
                )
            };
            println!(
                "forked {id} at sequence {}{moved}: {} events copied",
                f.forked.at, f.forked.copied
            );
            match &f.forked.workspace {
                Some(_) => println!(
                    "workspace: the parent's snapshot of that point, {} bytes",
                    f.workspace_bytes
                ),
                None => println!("workspace: empty (the parent had no snapshot by then)"),
            }
            // A fork of a gateway session is its tenant's too: it gets an index record, so the
            // tenant lists and opens it (API and console) like the parent.
            if let Some(origin) = log.created(&f.child).await?.and_then(|c| c.origin) {
                use herd::gateway::store::{Expect, Kind, Store};
                let store = Store::open(js.clone()).await?;
                let parent = store
                    .get::<serde_json::Value>(&origin.tenant, Kind::Session, id.as_str())
                    .await?;
                if let Some(parent) = parent {
                    let mut doc = parent.doc;
                    let at = herd::gateway::now();
                    doc["id"] = f.child.as_str().into();
                    doc["created_at"] = at.clone().into();
                    doc["updated_at"] = at.into();
                    doc["archived_at"] = serde_json::Value::Null;
                    doc["deleted_at"] = serde_json::Value::Null;
                    doc["forked_from"] = id.as_str().into();
                    store
                        .put(
                            &origin.tenant,
                            Kind::Session,
                            f.child.as_str(),
                            &doc,
                            Expect::New,
                        )
                        .await?;
                    println!("listed for tenant {}", origin.tenant);
                }
            }
            println!("{}", f.child);
        }
        SessionCmd::Snapshot { id, timeout_secs } => {
            let id = parse_session(&id)?;
            let from = log.last_sequence(&id).await? + 1;
            let request = api.request_snapshot(&id).await?;
            let mut live = log.follow(&id, from).await?;
            let found = tokio::time::timeout(std::time::Duration::from_secs(timeout_secs), async {
                while let Some(r) = live.next().await {
                    if let Ok(e) = r?
                        && let herd::event::EventBody::SandboxWorkspaceSaved(s) = &e.event.body
                        && s.request_id == request
                    {
                        return Ok::<_, anyhow::Error>(Some((e.seq, s.clone())));
                    }
                }
                Ok(None)
            })
            .await;
            match found {
                Ok(Ok(Some((seq, s)))) => match &s.error {
                    Some(why) => bail!("the workspace was not saved: {why}"),
                    None => println!(
                        "saved at sequence {seq} on {}: {} bytes in {} chunks ({} new, {} bytes written{}) in {} ms\n{}",
                        s.host,
                        s.bytes,
                        s.chunks,
                        s.new_chunks,
                        s.stored_bytes,
                        if s.unchanged { ", unchanged" } else { "" },
                        s.duration_ms,
                        s.manifest.unwrap_or_default()
                    ),
                },
                Ok(r) => {
                    r?;
                    bail!("the session's log ended before its snapshot")
                }
                Err(_) => bail!(
                    "no hand saved the workspace within {timeout_secs} s (is the `herd hands` holding its sandbox running?)"
                ),
            }
        }
        SessionCmd::Schedule {
            id,
            name,
            when,
            prompt,
        } => {
            let id = parse_session(&id)?;
            let def = api.set_schedule(&id, &name, &when, &prompt).await?;
            println!("scheduled {:?} on {id}: {}", def.name, def.spec);
        }
        SessionCmd::Schedules { id, json } => {
            let id = parse_session(&id)?;
            for def in api.schedules(&id).await? {
                if json {
                    println!("{}", serde_json::to_string(&def)?);
                } else {
                    println!("{}  {}  {}", def.name, def.spec, def.prompt);
                }
            }
        }
        SessionCmd::Unschedule { id, name } => {
            let id = parse_session(&id)?;
            api.cancel_schedule(&id, &name).await?;
            println!("cancelled {name:?} on {id}");
        }
        SessionCmd::List { json } => {
            for (id, n) in log.list().await? {
                if json {
                    println!("{}", serde_json::json!({"session_id": id, "events": n}));
                } else {
                    println!("{id}  {n} events");
                }
            }
        }
    }
    Ok(())
}
