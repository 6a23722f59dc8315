//! `herd check`: the log checker's command line.

use anyhow::bail;
use clap::Args;
use herd::event::SessionId;
use herd::session::{SessionLog, SessionReport};

#[derive(Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["session_id", "all"]))]
pub struct CheckArgs {
    /// The session to check.
    session_id: Option<String>,
    /// Check every session in the stream, in one pass over it.
    #[arg(long)]
    all: bool,
    /// Also require every session to be settled: idle, waiting on named input, or terminated —
    /// none still running. Use it once the load has stopped.
    #[arg(long)]
    settled: bool,
    /// Print the reports as JSON (one object with `sessions` and `summary`).
    #[arg(long)]
    json: bool,
    /// List every session, not only those with violations.
    #[arg(long, short)]
    verbose: bool,
}

/// Runs the checker; fails (exit 1) when any rule is broken.
pub async fn run(client: async_nats::Client, a: CheckArgs) -> anyhow::Result<()> {
    let log = SessionLog::open(client).await?;
    let reports = match &a.session_id {
        Some(id) => {
            let id = SessionId::parse(id.as_str())
                .map_err(|e| anyhow::anyhow!("invalid session id: {e}"))?;
            vec![log.check(&id, a.settled).await?]
        }
        None => log.check_all(a.settled).await?,
    };
    let events: u64 = reports.iter().map(|r| r.events).sum();
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    let failing = reports.iter().filter(|r| !r.ok()).count();
    if a.json {
        let out = serde_json::json!({
            "sessions": reports,
            "summary": {
                "sessions": reports.len(),
                "events": events,
                "violations": violations,
                "sessions_with_violations": failing,
                "settled_required": a.settled,
            }
        });
        println!(
            "{}",
            super::output::json_text(serde_json::to_string_pretty(&out)?)
        );
    } else {
        for r in &reports {
            if a.verbose || !r.ok() {
                print_report(r);
            }
        }
        println!(
            "checked {} session(s), {events} event(s): {violations} violation(s){}",
            reports.len(),
            if violations > 0 {
                format!(" in {failing} session(s)")
            } else {
                String::new()
            }
        );
    }
    if violations > 0 {
        bail!("{violations} violation(s) in {failing} session(s)");
    }
    Ok(())
}

fn print_report(r: &SessionReport) {
    println!(
        "{} {:<6} {:>7} events  {}",
        r.session_id,
        if r.ok() { "ok" } else { "FAILED" },
        r.events,
        super::output::escape(&r.outcome.to_string())
    );
    for v in &r.violations {
        println!(
            "    seq {:>8}  {}: {}",
            v.seq,
            v.rule.describe(),
            super::output::escape(&v.detail)
        );
    }
}
