//! `herd status`: how full herd's store is — each stream and bucket against its bound, and
//! the JetStream account's storage — with a warning at 70 %, before a full store refuses
//! writes (rule 11).

use clap::Args;

#[derive(Args)]
pub struct StatusArgs {
    /// As JSON.
    #[arg(long)]
    json: bool,
}

/// Past this share of a bound, the line says so.
const WARN_PERCENT: f64 = 70.0;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

pub async fn run(client: async_nats::Client, a: StatusArgs) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client);
    let usage = herd::bus::streams::usage(&js).await?;
    let account = js.query_account().await?;
    let max_storage = account
        .limits
        .max_storage
        .and_then(|m| u64::try_from(m).ok());
    if a.json {
        let v = serde_json::json!({
            "streams": usage,
            "account": {"storage": account.storage, "max_storage": max_storage,
                        "memory": account.memory, "streams": account.streams,
                        "consumers": account.consumers},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<18} {:>10} {:>12} {:>12} {:>6}",
        "stream", "messages", "bytes", "bound", "used"
    );
    let mut warnings = Vec::new();
    for u in &usage {
        let pct = u.percent();
        println!(
            "{:<18} {:>10} {:>12} {:>12} {:>6}",
            u.stream,
            u.messages,
            mib(u.bytes),
            u.max_bytes.map(mib).unwrap_or_else(|| "none".into()),
            pct.map(|p| format!("{p:.0}%"))
                .unwrap_or_else(|| "-".into())
        );
        if pct.is_some_and(|p| p >= WARN_PERCENT) {
            warnings.push(format!(
                "{} is {:.0}% full: past its bound it refuses writes",
                u.stream,
                pct.unwrap_or_default()
            ));
        }
    }
    println!(
        "account: {} stored{}, {} streams, {} consumers",
        mib(account.storage),
        max_storage
            .map(|m| format!(" of {}", mib(m)))
            .unwrap_or_else(|| " (no account limit: the server's max_file_store bounds it)".into()),
        account.streams,
        account.consumers
    );
    for w in warnings {
        println!("warning: {w}");
    }
    Ok(())
}
