//! The workspace quota (rule 11): how much a session's `/workspace` may hold.
//!
//! Docker's local volume driver has no size option (a quota needs XFS project quotas under
//! the volume root, which herd cannot assume), so the hand measures instead: after a tool
//! call, at most every `workspace_check_every` (30 s by default), it runs `du` in the sandbox. Over the quota, `bash` still runs (so the model can delete files),
//! with an error saying so; every other built-in tool is refused until a measure shows the
//! workspace back under it. The decisions are here, without I/O.

use std::time::{Duration, Instant};

/// What the hand last measured of one workspace.
#[derive(Debug, Clone, Copy)]
pub struct Measure {
    /// When.
    pub at: Instant,
    /// Bytes in `/workspace`.
    pub bytes: u64,
}

/// Whether a measure is due: never measured, over quota (each call re-checks, so cleaning up
/// is seen at once), or the last one is older than `every`.
pub fn due(last: Option<Measure>, quota: u64, every: Duration, now: Instant) -> bool {
    match last {
        None => true,
        Some(m) => m.bytes > quota || now.duration_since(m.at) >= every,
    }
}

/// The refusal for a tool that would add to a workspace over its quota; `None` runs it.
pub fn refusal(last: Option<Measure>, quota: u64, tool: &str) -> Option<String> {
    let m = last?;
    if m.bytes <= quota || tool == "bash" {
        return None;
    }
    Some(format!(
        "{}; {tool} is refused until it is back under (delete files with bash: rm, or git clean)",
        over(m.bytes, quota)
    ))
}

/// What a measure that failed (or took too long) records: over any quota (fails closed).
pub const UNMEASURED: u64 = u64::MAX;

/// The note a call gets when it leaves the workspace over its quota.
pub fn over(bytes: u64, quota: u64) -> String {
    if bytes == UNMEASURED {
        return format!(
            "The workspace could not be measured within 20 s, so it counts as over this deployment's quota of {} MiB",
            quota >> 20
        );
    }
    format!(
        "The workspace holds {} MiB, over this deployment's quota of {} MiB",
        bytes.div_ceil(1 << 20),
        quota >> 20
    )
}

/// Bytes from `du -sk` output (`1234\t/workspace`).
pub fn parse_du(out: &str) -> Option<u64> {
    out.split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?
        .checked_mul(1024)
}

/// What `herd gc` knows of a workspace volume's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFate {
    /// The log has no such session (removed by an operator, or never created).
    Unknown,
    /// Idle, its last event this long ago.
    Idle(Duration),
    /// Running, or waiting on something: its workspace is in use.
    Active,
}

/// Why `herd gc` removes a volume with no container attached; `None` keeps it.
pub fn collect(fate: SessionFate, idle_for: Duration) -> Option<String> {
    match fate {
        SessionFate::Unknown => Some("its session is not in the log".into()),
        SessionFate::Idle(d) if d >= idle_for => Some(format!(
            "its session has been idle for {} days",
            d.as_secs() / 86_400
        )),
        _ => None,
    }
}

/// The session of a workspace volume name, `herd-ws-<host>-<session id>`.
pub fn volume_session(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("herd-ws-")?;
    let at = rest.rfind("-sesn_")?;
    Some((&rest[..at], &rest[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_keeps_active_and_recent_workspaces() {
        let month = Duration::from_secs(30 * 86_400);
        assert!(collect(SessionFate::Unknown, month).is_some());
        assert!(collect(SessionFate::Active, month).is_none());
        assert!(collect(SessionFate::Idle(Duration::from_secs(86_400)), month).is_none());
        let why = collect(SessionFate::Idle(month * 2), month).unwrap();
        assert!(why.contains("idle for 60 days"), "{why}");
        assert_eq!(
            volume_session("herd-ws-my-host-sesn_01abc"),
            Some(("my-host", "sesn_01abc"))
        );
        assert_eq!(volume_session("other-volume"), None);
    }

    #[test]
    fn quota_decisions() {
        let now = Instant::now();
        let q = 10 << 20;
        let every = Duration::from_secs(30);
        let under = Measure {
            at: now,
            bytes: 1 << 20,
        };
        let overq = Measure {
            at: now,
            bytes: 11 << 20,
        };
        assert!(due(None, q, every, now));
        assert!(!due(Some(under), q, every, now + Duration::from_secs(5)));
        assert!(due(Some(under), q, every, now + every));
        assert!(
            due(Some(overq), q, every, now),
            "over quota: every call re-checks"
        );
        assert!(refusal(Some(under), q, "write").is_none());
        assert!(
            refusal(Some(overq), q, "bash").is_none(),
            "bash can clean up"
        );
        let why = refusal(Some(overq), q, "write").unwrap();
        assert!(
            why.contains("11 MiB, over this deployment's quota of 10 MiB"),
            "{why}"
        );
        assert_eq!(parse_du("1234\t/workspace\n"), Some(1234 * 1024));
        assert_eq!(parse_du("du: cannot"), None);
    }
}
