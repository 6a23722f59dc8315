//! How the CLI prints events and states.

use herd::event::{EventBody, Record, content_text};
use herd::session::SessionState;
use serde_json::json;

/// The stream sequence of a record.
pub fn seq_of(r: &Record) -> u64 {
    match r {
        Ok(e) => e.seq,
        Err(bad) => bad.seq,
    }
}

/// The event type of a record (from its subject when it is invalid).
pub fn type_of(r: &Record) -> &str {
    match r {
        Ok(e) => e.event.type_name(),
        Err(bad) => herd::bus::subjects::parse_session_subject(&bad.subject).map_or("", |(_, t)| t),
    }
}

/// Makes text safe for a terminal: every control character but newline and tab — C0 (ESC,
/// BEL, CR, BS, …), DEL and C1 (U+0080–U+009F, whose U+009B starts a CSI sequence on some
/// terminals) — is shown as a visible escape (`\x1b`, `\r`, `\u{9b}`), so model text, tool
/// output, titles and ids can neither move the cursor, rewrite what an operator reads before
/// approving a call, set the clipboard (OSC 52) nor plant links. `--json` output is exact
/// instead (JSON escapes control characters itself).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Characters a terminal acts on or hides without showing: C1 controls (U+0080-U+009F),
/// zero-width and direction marks (U+200B-U+200F), line and paragraph separators, bidi
/// embeddings and isolates (U+202A-U+202E, U+2066-U+2069, which can reorder the input an
/// operator is about to approve) and the byte-order mark.
fn hidden(c: char) -> bool {
    matches!(c as u32,
        0x80..=0x9f | 0x200b..=0x200f | 0x2028..=0x202e | 0x2066..=0x2069 | 0xfeff)
}

/// One line for a field inside a multi-line block: its newlines shown as ⏎, so a value
/// cannot fake the block's other lines.
fn one_line(s: &str) -> String {
    s.replace('\n', "⏎")
}

/// JSON for a terminal: serde_json escapes only what JSON requires (below U+0020), so DEL,
/// C1 and the characters of [`hidden`] are written as `\uXXXX` escapes too. The value is the
/// same JSON; only its spelling differs.
pub fn json_text(text: String) -> String {
    if !text.chars().any(|c| c as u32 == 0x7f || hidden(c)) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c as u32 == 0x7f || hidden(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    let flat = s.replace('\n', "⏎");
    if flat.chars().count() <= n {
        flat
    } else {
        format!("{}…", flat.chars().take(n).collect::<String>())
    }
}

/// A one-line summary of an event's content.
fn summary(body: &EventBody) -> String {
    match body {
        EventBody::SessionCreated(c) => format!(
            "model={} tools={}{}",
            c.agent.model,
            c.agent.tools.len(),
            c.title
                .as_ref()
                .map(|t| format!(" title={t:?}"))
                .unwrap_or_default()
        ),
        EventBody::UserMessage(m) => content_text(&m.content),
        EventBody::AgentMessage(m) => content_text(&m.content),
        EventBody::SystemMessage(m) => content_text(&m.content),
        EventBody::AgentToolUse(t) => format!("{} {} {}", t.tool_use_id, t.name, t.input),
        EventBody::AgentCustomToolUse(t) => format!("{} {} {}", t.tool_use_id, t.name, t.input),
        EventBody::AgentMcpToolUse(t) => format!(
            "{} {}/{} {}",
            t.tool_use_id, t.mcp_server_name, t.name, t.input
        ),
        EventBody::AgentMcpToolResult(r) => format!(
            "{}{} {}",
            r.mcp_tool_use_id,
            if r.is_error { " [error]" } else { "" },
            content_text(&r.content)
        ),
        EventBody::McpToolsListed(l) => match &l.error {
            Some(e) => format!("{} [error] {e}", l.mcp_server_name),
            None => format!(
                "{}: {}{}",
                l.mcp_server_name,
                l.tools
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if l.skipped.is_empty() {
                    String::new()
                } else {
                    format!(" ({} left out)", l.skipped.len())
                }
            ),
        },
        EventBody::AgentToolResult(r) => format!(
            "{}{} {}",
            r.tool_use_id,
            if r.is_error { " [error]" } else { "" },
            content_text(&r.content)
        ),
        EventBody::UserCustomToolResult(r) => format!(
            "{}{} {}",
            r.custom_tool_use_id,
            if r.is_error { " [error]" } else { "" },
            content_text(&r.content)
        ),
        EventBody::UserToolConfirmation(c) => format!("{} {}", c.tool_use_id, c.result),
        EventBody::SessionStatusIdle(i) => format!("stop_reason={}", i.stop_reason.kind),
        EventBody::SessionStatusTerminated(t) => t.reason.clone(),
        EventBody::SessionError(e) => format!("{}: {}", e.error.kind, e.error.message),
        EventBody::SpanModelRequestEnd(s) => format!(
            "in={} out={}{}",
            s.model_usage.input_tokens,
            s.model_usage.output_tokens,
            if s.is_error { " [error]" } else { "" }
        ),
        EventBody::SessionLimitReached(l) => format!("{} {}/{}", l.limit, l.used, l.max),
        EventBody::SessionUsage(u) => {
            format!("in={} out={}", u.usage.input_tokens, u.usage.output_tokens)
        }
        EventBody::AgentThreadContextCompacted(c) => {
            format!("up to #{}: {}", c.compacted_up_to, c.summary)
        }
        EventBody::SandboxWorkspaceSaved(w) => match &w.error {
            Some(e) => format!("{} [error] {e}", w.request_id),
            None => format!(
                "{} {} bytes, {} of {} chunks new{} in {} ms",
                w.request_id,
                w.bytes,
                w.new_chunks,
                w.chunks,
                if w.unchanged { ", unchanged" } else { "" },
                w.duration_ms
            ),
        },
        EventBody::SandboxWorkspaceRestored(w) => match &w.error {
            Some(e) => format!("on {} [error] {e}", w.host),
            None => format!(
                "on {} from #{}: {} bytes in {} ms",
                w.host, w.saved_seq, w.bytes, w.duration_ms
            ),
        },
        EventBody::SessionForked(f) => {
            format!("from {} at #{} ({} events)", f.parent, f.at, f.copied)
        }
        EventBody::SessionScheduleSet(s) => format!("{} {}: {}", s.name, s.spec, s.prompt),
        EventBody::SessionScheduleCancelled(s) => s.name.clone(),
        EventBody::SessionScheduleFired(s) => format!("{} at {}", s.name, s.fired_at),
        EventBody::Unknown(u) => serde_json::Value::Object(u.fields.clone()).to_string(),
        other => {
            let mut v = herd::event::Event::new(other.clone()).to_json();
            if let Some(m) = v.as_object_mut() {
                for k in ["id", "type", "processed_at"] {
                    m.remove(k);
                }
            }
            if v.as_object().is_some_and(|m| m.is_empty()) {
                String::new()
            } else {
                v.to_string()
            }
        }
    }
}

/// Prints one record, as a readable line or a JSON line.
pub fn print_record(r: &Record, as_json: bool) {
    if as_json {
        let v = match r {
            Ok(e) => json!({"seq": e.seq, "session_id": e.session_id, "event": e.event.to_json()}),
            Err(bad) => {
                json!({"seq": bad.seq, "session_id": bad.session_id, "subject": bad.subject, "invalid": bad.error})
            }
        };
        println!("{}", json_text(v.to_string()));
        return;
    }
    match r {
        Ok(e) => {
            let at = herd::event::format_time(e.event.processed_at);
            println!(
                "{:>8}  {}  {:<30} {}",
                e.seq,
                at.get(11..23).unwrap_or(&at),
                escape(e.event.type_name()),
                escape(&clip(&summary(&e.event.body), 200))
            );
        }
        Err(bad) => println!(
            "{:>8}  {:<12}  {:<30} INVALID: {}",
            bad.seq,
            "",
            escape(type_of(r)),
            escape(&clip(&bad.error, 200))
        ),
    }
}

/// A session's state for people, escaped for the terminal.
pub fn state_text(s: &SessionState) -> String {
    escape(&state_lines(s))
}

fn state_lines(s: &SessionState) -> String {
    let mut t = String::new();
    t.push_str(&format!("session      {}\n", s.id));
    if let Some(title) = &s.title {
        t.push_str(&format!("title        {}\n", one_line(title)));
    }
    match &s.config {
        Some(c) => t.push_str(&format!(
            "model        {}\ntools        {}\n",
            c.agent.model,
            if c.agent.tools.is_empty() {
                "(none)".to_string()
            } else {
                c.agent
                    .tools
                    .iter()
                    .map(|x| x.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
        None => t.push_str("config       (no session.created event)\n"),
    }
    let status = serde_json::to_value(s.status)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    t.push_str(&format!("status       {status}"));
    if let Some(r) = &s.stop_reason {
        t.push_str(&format!(" (stop_reason: {})", r.kind));
    }
    if let Some(r) = &s.terminated_reason {
        t.push_str(&format!(" ({})", one_line(r)));
    }
    t.push('\n');
    t.push_str(&format!(
        "events       {} (last sequence {}){}\n",
        s.event_count,
        s.last_seq,
        if s.invalid_records > 0 {
            format!(", {} invalid", s.invalid_records)
        } else {
            String::new()
        }
    ));
    t.push_str(&format!(
        "usage        {} input, {} output, {} cache write, {} cache read tokens\n",
        s.usage.input_tokens,
        s.usage.output_tokens,
        s.usage.cache_creation_input_tokens,
        s.usage.cache_read_input_tokens
    ));
    if let Some(cost) = &s.list_cost {
        let cents: u64 = cost.amount.parse().unwrap_or(0);
        t.push_str(&format!(
            "list cost    {} (at list prices, rounded up to the cent)\n",
            herd::event::format_usd(cents)
        ));
    }
    if let Some(b) = &s.limits.budget {
        t.push_str(&format!(
            "budget       {} (max_list_cost {} US cents)\n",
            herd::event::format_usd(b.max_cents()),
            one_line(&b.max_list_cost.amount)
        ));
    }
    let l = &s.limits;
    let set: Vec<String> = [
        ("model_requests_per_turn", l.model_requests_per_turn),
        ("model_requests", l.model_requests),
        ("tool_calls_per_turn", l.tool_calls_per_turn),
        ("tool_calls", l.tool_calls),
        ("output_tokens_per_turn", l.output_tokens_per_turn),
        ("output_tokens", l.output_tokens),
        ("wall_seconds_per_turn", l.wall_seconds_per_turn),
    ]
    .into_iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n}={v}")))
    .collect();
    if !set.is_empty() {
        t.push_str(&format!("limits       {}\n", set.join(", ")));
    }
    for (id, p) in &s.pending_tools {
        t.push_str(&format!(
            "pending      {id} {} ({:?}, #{}){}\n",
            p.name,
            p.kind,
            p.seq,
            if p.awaiting_confirmation {
                " awaiting confirmation"
            } else {
                ""
            }
        ));
    }
    if let Some(e) = &s.last_error {
        t.push_str(&format!("last error   {}\n", one_line(e)));
    }
    for (k, v) in &s.metadata {
        t.push_str(&format!("metadata     {}={}\n", one_line(k), one_line(v)));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::{escape, json_text};

    #[test]
    fn control_characters_are_shown_never_sent() {
        let hostile = "ok\x1b]52;c;ZXZpbA==\x07\x1b[2J\rfake\u{9b}31m\x7f\tend\n";
        let shown = escape(hostile);
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{shown:?}"
        );
        assert_eq!(
            shown,
            "ok\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\rfake\\u{9b}31m\\x7f\tend\n"
        );
        assert_eq!(escape("plain café ⏎"), "plain café ⏎");
        assert_eq!(escape("a\u{202e}b\u{200b}"), "a\\u{202e}b\\u{200b}");
        let json = json_text(serde_json::json!({"t": "x\u{7f}\u{9b}\u{2066}"}).to_string());
        assert_eq!(json, r#"{"t":"x\u007f\u009b\u2066"}"#);
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["t"], "x\u{7f}\u{9b}\u{2066}");
    }
}
