//! `get_events`: the model reads its own log. A pure function of the events before the call
//! and the call's input, so any brain that answers the call (a crashed one's replacement
//! included) gives the same answer, and the answer is an ordinary `agent.tool_result` that
//! replays read back rather than recompute.
//!
//! Each matching event is one line: `#<seq> <type> <processed_at> <fields as JSON>`, the
//! fields exactly as stored (the wire form, without id and type), so a detail a compaction
//! summarised away comes back byte for byte.

use serde::Deserialize;
use serde_json::Value;

use crate::event::{EventBody, StoredEvent, check_type_name, format_time};

/// The most bytes of events one answer carries; the rest is named in a note.
pub const MAX_ANSWER: usize = 64 * 1024;
/// The most events one answer may ask for (`last`, `limit`).
pub const MAX_EVENTS: u64 = 1000;
/// Events one answer carries when the call sets no `limit`.
pub const DEFAULT_LIMIT: u64 = 100;
/// The longest `text` a call may search for.
pub const MAX_TEXT: usize = 1024;
/// The most `types` one call may name.
pub const MAX_TYPES: usize = 32;
/// The most bytes of event text one text search reads; past it, the answer says where it
/// stopped and how to go on (a search over a huge log never ties up a brain).
pub const MAX_SEARCHED: usize = 32 * 1024 * 1024;
/// Event types never shown: the session's configuration (its system prompt, vault and server
/// names, MCP URLs, which may carry keys) is not the conversation.
pub const HIDDEN: &[&str] = &["session.created", "session.mcp_tools_listed"];

/// The call's input, as the model writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    to: Option<u64>,
    #[serde(default)]
    last: Option<u64>,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    regex: bool,
    #[serde(default)]
    limit: Option<u64>,
}

/// How text is matched.
enum Matcher {
    Any,
    Substring(String),
    Regex(regex::Regex),
}

impl Matcher {
    fn matches(&self, text: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Substring(s) => text.contains(s.as_str()),
            Self::Regex(r) => r.is_match(text),
        }
    }
}

/// The text of an event that `text` searches: what was said, and tool inputs and outputs.
fn searchable(e: &StoredEvent) -> String {
    let blocks = |c: &[crate::event::ContentBlock]| crate::event::content_text(c);
    match &e.event.body {
        EventBody::UserMessage(m) => blocks(&m.content),
        EventBody::AgentMessage(m) => blocks(&m.content),
        EventBody::SystemMessage(m) => blocks(&m.content),
        EventBody::AgentToolUse(t) => format!("{} {}", t.name, t.input),
        EventBody::AgentCustomToolUse(t) => format!("{} {}", t.name, t.input),
        EventBody::AgentMcpToolUse(t) => format!("{} {}", t.name, t.input),
        EventBody::AgentToolResult(r) => blocks(&r.content),
        EventBody::AgentMcpToolResult(r) => blocks(&r.content),
        EventBody::UserCustomToolResult(r) => blocks(&r.content),
        EventBody::AgentThreadContextCompacted(c) => c.summary.clone(),
        _ => String::new(),
    }
}

/// One event's line.
fn line(e: &StoredEvent) -> String {
    let fields = Value::Object(e.event.body.to_fields());
    format!(
        "#{} {} {} {}\n",
        e.seq,
        e.event.type_name(),
        format_time(e.event.processed_at),
        fields
    )
}

/// The answer to a `get_events` call at sequence `call_seq`, from `events` (the log; only
/// events before the call are read). `Err` is an error result the model sees.
pub fn answer(events: &[StoredEvent], call_seq: u64, input: &Value) -> Result<String, String> {
    let q: Query = serde_json::from_value(if input.is_null() {
        Value::Object(Default::default())
    } else {
        input.clone()
    })
    .map_err(|e| {
        format!(
            "invalid get_events input: {e}; expected {{\"from\": 1, \"to\": 50}}, {{\"last\": 20, \"types\": [\"user.message\"]}} or {{\"text\": \"…\", \"regex\": false}}"
        )
    })?;
    let before: Vec<&StoredEvent> = events.iter().filter(|e| e.seq < call_seq).collect();
    let newest = before.last().map_or(0, |e| e.seq);
    let from = q.from.unwrap_or(1);
    let to = q.to.unwrap_or(newest);
    if from == 0 || q.to == Some(0) {
        return Err("sequences start at 1".into());
    }
    if from > newest {
        return Err(format!(
            "from ({from}) is past the end: the log before this call ends at sequence {newest}"
        ));
    }
    if from > to {
        return Err(format!("from ({from}) is after to ({to})"));
    }
    for (name, v) in [("last", q.last), ("limit", q.limit)] {
        match v {
            Some(0) => return Err(format!("{name} must be at least 1")),
            Some(n) if n > MAX_EVENTS => {
                return Err(format!(
                    "{name} is {n}; at most {MAX_EVENTS} events per call (page with from/to)"
                ));
            }
            _ => {}
        }
    }
    if q.types.len() > MAX_TYPES {
        return Err(format!("at most {MAX_TYPES} types per call"));
    }
    for t in &q.types {
        check_type_name(t)?;
    }
    let matcher = match q.text {
        None => Matcher::Any,
        Some(t) if t.len() > MAX_TEXT => {
            return Err(format!("text is over {MAX_TEXT} bytes"));
        }
        Some(t) if t.is_empty() => return Err("text must not be empty".into()),
        Some(t) if q.regex => Matcher::Regex(
            regex::RegexBuilder::new(&t)
                .size_limit(64 * 1024)
                .dfa_size_limit(1 << 20)
                .build()
                .map_err(|e| format!("invalid regular expression: {e}"))?,
        ),
        Some(t) => Matcher::Substring(t),
    };
    let mut searched = 0usize;
    let mut stopped_at = None;
    let mut matching: Vec<&StoredEvent> = Vec::new();
    for e in before
        .into_iter()
        .filter(|e| e.seq >= from && e.seq <= to)
        .filter(|e| !HIDDEN.contains(&e.event.type_name()))
        .filter(|e| q.types.is_empty() || q.types.iter().any(|t| t == e.event.type_name()))
    {
        if !matches!(matcher, Matcher::Any) {
            let text = searchable(e);
            searched += text.len();
            if searched > MAX_SEARCHED {
                stopped_at = Some(e.seq);
                break;
            }
            if !matcher.matches(&text) {
                continue;
            }
        }
        matching.push(e);
    }
    let stop_note = stopped_at.map(|seq| {
        format!(
            "[the search read {MAX_SEARCHED} bytes of event text and stopped before #{seq}; ask again with from={seq} for the rest]\n"
        )
    });
    let total = matching.len();
    let chosen: &[&StoredEvent] = match q.last {
        Some(n) => &matching[total.saturating_sub(n as usize)..],
        None => &matching[..total.min(q.limit.unwrap_or(DEFAULT_LIMIT) as usize)],
    };
    if chosen.is_empty() {
        return Ok(format!(
            "No events match (the log before this call holds sequences 1 to {newest}).\n{}",
            stop_note.unwrap_or_default()
        ));
    }
    // What fits: the oldest first, or with `last` the newest (the ones asked for).
    let mut kept: Vec<String> = Vec::new();
    let mut bytes = 0;
    let order: Box<dyn Iterator<Item = &&StoredEvent>> = if q.last.is_some() {
        Box::new(chosen.iter().rev())
    } else {
        Box::new(chosen.iter())
    };
    for e in order {
        let l = line(e);
        if bytes + l.len() > MAX_ANSWER {
            break;
        }
        bytes += l.len();
        kept.push(l);
    }
    if q.last.is_some() {
        kept.reverse();
    }
    let mut out = String::new();
    let shown = kept.len();
    if shown == 0 {
        // One event over the cap: its head, so the call is never useless.
        let e = if q.last.is_some() {
            chosen[chosen.len() - 1]
        } else {
            chosen[0]
        };
        let l = line(e);
        let mut end = MAX_ANSWER.min(l.len());
        while !l.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&l[..end]);
        out.push_str(&format!(
            "\n[event #{} is {} bytes; cut at {MAX_ANSWER}]\n",
            e.seq,
            l.len()
        ));
    } else {
        out.extend(kept);
    }
    let shown = shown.max(1);
    let left = total - shown;
    if left > 0 {
        let hint = if q.last.is_some() {
            let oldest_shown = chosen[chosen.len() - shown].seq;
            format!(
                "; for earlier ones ask with to={}",
                oldest_shown.saturating_sub(1)
            )
        } else {
            format!(
                "; ask again with from={}",
                chosen.get(shown).map_or(newest, |e| e.seq)
            )
        };
        out.push_str(&format!(
            "[{shown} of {total} matching events shown (at most {MAX_ANSWER} bytes per answer){hint}]\n"
        ));
    }
    if let Some(n) = stop_note {
        out.push_str(&n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use serde_json::json;

    fn log() -> Vec<StoredEvent> {
        let id = SessionId::parse("sesn_q").unwrap();
        let mut out = Vec::new();
        for i in 1..=20u64 {
            let body: EventBody = if i % 2 == 1 {
                UserMessage {
                    content: vec![ContentBlock::text(format!(
                        "question {i}: the code is K{i}Z"
                    ))],
                }
                .into()
            } else {
                AgentMessage {
                    content: vec![ContentBlock::text(format!("answer {i}"))],
                }
                .into()
            };
            out.push(StoredEvent {
                session_id: id.clone(),
                seq: i,
                event: Event::new(body),
            });
        }
        out
    }

    #[test]
    fn slices_by_sequence_type_and_text() {
        let l = log();
        let a = answer(&l, 21, &json!({"from": 3, "to": 4})).unwrap();
        assert_eq!(a.lines().count(), 2);
        assert!(a.starts_with("#3 user.message ") && a.contains("the code is K3Z"));
        let a = answer(&l, 21, &json!({"last": 2, "types": ["user.message"]})).unwrap();
        assert!(a.contains("#17 ") && a.contains("#19 ") && !a.contains("#20 "));
        let a = answer(&l, 21, &json!({"text": "K13Z"})).unwrap();
        assert_eq!(a.lines().count(), 1);
        assert!(a.starts_with("#13 "));
        let a = answer(&l, 21, &json!({"text": "K1[0-9]Z", "regex": true})).unwrap();
        assert_eq!(a.lines().count(), 5, "{a}");
        // Only what came before the call.
        let a = answer(&l, 5, &json!({})).unwrap();
        assert_eq!(a.lines().count(), 4);
    }

    #[test]
    fn the_sessions_configuration_is_never_shown() {
        let mut l = log();
        l[0].event = Event::new(SessionCreated::new(AgentConfig::new("m")));
        let a = answer(&l, 21, &json!({"from": 1, "to": 2})).unwrap();
        assert!(
            a.starts_with("#2 ") && !a.contains("session.created"),
            "{a}"
        );
        let a = answer(&l, 21, &json!({"types": ["session.created"]})).unwrap();
        assert!(a.starts_with("No events match"), "{a}");
    }

    #[test]
    fn bad_ranges_and_huge_requests_are_clear_errors() {
        let l = log();
        for (input, says) in [
            (json!({"from": 30}), "past the end"),
            (json!({"from": 9, "to": 3}), "after to"),
            (json!({"from": 0}), "start at 1"),
            (json!({"last": 5000}), "at most 1000"),
            (json!({"limit": 0}), "at least 1"),
            (
                json!({"text": "(", "regex": true}),
                "invalid regular expression",
            ),
            (json!({"types": ["Not A Type"]}), "not valid"),
            (json!({"since": 3}), "unknown field"),
            (json!({"text": "x".repeat(2000)}), "over 1024"),
            (json!("all"), "invalid get_events input"),
        ] {
            let e = answer(&l, 21, &input).unwrap_err();
            assert!(e.contains(says), "{input}: {e}");
        }
        assert!(
            answer(&l, 21, &json!({"text": "nothing like it"}))
                .unwrap()
                .starts_with("No events match")
        );
    }

    #[test]
    fn a_large_answer_is_cut_with_a_note_that_says_how_to_go_on() {
        let id = SessionId::parse("sesn_q").unwrap();
        let big: Vec<StoredEvent> = (1..=40)
            .map(|i| StoredEvent {
                session_id: id.clone(),
                seq: i,
                event: Event::new(UserMessage {
                    content: vec![ContentBlock::text("y".repeat(4000))],
                }),
            })
            .collect();
        let a = answer(&big, 41, &json!({"limit": 40})).unwrap();
        assert!(a.len() <= MAX_ANSWER + 200);
        assert!(
            a.contains("matching events shown") && a.contains("ask again with from="),
            "{}",
            &a[a.len() - 200..]
        );
    }
}
