//! `herd decode`: one payload (MessagePack or JSON) on stdin into JSON, for
//! `nats sub --translate 'herd decode'`.

use std::io::{Read, Write};

use anyhow::Context;

/// Decodes stdin to stdout.
pub fn decode(pretty: bool) -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading stdin")?;
    let value = herd::event::decode_to_json(&input)?;
    let text = if pretty {
        serde_json::to_string_pretty(&value)?
    } else {
        serde_json::to_string(&value)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", super::output::json_text(text))?;
    Ok(())
}
