//! Where a tool's output goes: inline in its `agent.tool_result` when it is short, otherwise
//! whole into the object store with its head and tail kept in the event and a note saying
//! where the rest is, so the log stays small and nothing the tool printed is lost.

use async_nats::jetstream;

use crate::event::{OutputRef, SessionId};

/// Results longer than this (in bytes) keep only their head and tail in the event; the whole
/// output goes to the object store.
pub const INLINE_LIMIT: usize = 32 * 1024;
/// The object store bucket for large outputs (defined in `streams/buckets.json`).
pub const BLOBS: &str = "herd-blobs";

/// Storing a large output failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot store a large output: {0}")]
pub struct BlobError(String);

/// The head and tail of a long text, with a note in between saying what was left out and why.
pub fn head_and_tail(text: &str, why: &str) -> String {
    if text.len() <= INLINE_LIMIT {
        return text.to_string();
    }
    let floor = |mut i: usize| {
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let head = floor(INLINE_LIMIT / 2);
    let tail = floor(text.len() - INLINE_LIMIT / 4);
    format!(
        "{}\n[… {} bytes omitted here; {why}]\n{}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

/// Why an output of `size` bytes may not be stored when the session's outputs already hold
/// `stored` bytes of a `quota`: `None` when it fits.
pub fn over_quota(stored: u64, size: usize, quota: u64) -> Option<String> {
    (stored.saturating_add(size as u64) > quota).then(|| {
        format!(
            "the whole output ({size} bytes) was not stored: this session's large outputs already hold {stored} of its {quota}-byte quota"
        )
    })
}

/// The object name of a call's whole output: derived from the session and the call, never
/// from anything a tool or an event says, so it cannot point elsewhere.
pub fn object_name(session: &SessionId, tool_use_id: &str) -> String {
    format!("sessions/{session}/{tool_use_id}.txt")
}

/// Keeps a short output inline; puts a long one in the object store and keeps its head and
/// tail, with a note saying where the rest is.
pub async fn inline_or_store(
    js: &jetstream::Context,
    session: &SessionId,
    tool_use_id: &str,
    text: &str,
) -> Result<(String, Option<OutputRef>), BlobError> {
    if text.len() <= INLINE_LIMIT {
        return Ok((text.to_string(), None));
    }
    let name = object_name(session, tool_use_id);
    let store = js
        .get_object_store(BLOBS)
        .await
        .map_err(|e| BlobError(e.to_string()))?;
    store
        .put(name.as_str(), &mut text.as_bytes())
        .await
        .map_err(|e| BlobError(e.to_string()))?;
    let inline = head_and_tail(
        text,
        &format!(
            "the whole output ({} bytes) is in object store {BLOBS}, object {name}",
            text.len()
        ),
    );
    Ok((
        inline,
        Some(OutputRef {
            bucket: BLOBS.into(),
            name,
            size: text.len() as u64,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_keeps_large_outputs_up_to_its_quota() {
        assert_eq!(over_quota(0, 100, 100), None);
        assert_eq!(over_quota(60, 40, 100), None);
        let why = over_quota(60, 41, 100).unwrap();
        assert!(
            why.contains("already hold 60 of its 100-byte quota"),
            "{why}"
        );
        assert!(over_quota(u64::MAX, 1, 100).is_some());
    }

    #[test]
    fn short_outputs_stay_whole() {
        let t = "x".repeat(INLINE_LIMIT);
        assert_eq!(head_and_tail(&t, "why"), t);
    }

    #[test]
    fn long_outputs_keep_head_and_tail_and_say_why() {
        let t = format!("{}{}", "a".repeat(INLINE_LIMIT), "é".repeat(INLINE_LIMIT));
        let cut = head_and_tail(&t, "see object o");
        assert!(cut.len() < t.len());
        assert!(cut.starts_with('a') && cut.ends_with('é'));
        assert!(cut.contains("bytes omitted here; see object o]"));
    }
}
