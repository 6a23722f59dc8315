//! What a hand does for a session's MCP servers: list a server's tools into a
//! `session.mcp_tools_listed` record, and run an `agent.mcp_tool_use` call. Both go out
//! through the hand's `http_request` client (address policy, no proxy, no redirects); the
//! server's credential is opened from the session's vaults, sent to that server's host only
//! (https, or plain http to loopback), and redacted from everything the model sees.

use serde_json::Value;

use super::http_request::{HttpRequests, host_allowed, is_loopback, percent_encoded, substituted};
use super::job::SessionAccess;
use super::mcp::{self, Endpoint};
use super::tools::ToolOutcome;
use crate::credentials::placeholders;
use crate::event::tools::{MAX_MCP_TOOLS, valid_tool_name};
use crate::event::{McpServer, McpTool, McpToolsListed};

/// The most of a tool's result the model gets.
pub const MAX_RESULT: usize = 256 * 1024;
/// The longest tool description recorded.
pub const MAX_DESCRIPTION: usize = 4 * 1024;
/// The largest input schema recorded (as JSON).
pub const MAX_SCHEMA: usize = 64 * 1024;
/// The most bytes of tools one listing records (an event stays well under the server's
/// message size); tools past it are left out, by name.
pub const MAX_LISTING: usize = 256 * 1024;

/// A value as it appears inside a JSON string.
fn json_escaped(value: &str) -> String {
    let quoted = Value::String(value.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// The endpoint of `server` for a session, and the forms of its credential to redact. The
/// credential is the one the server names, else the first `static_bearer` credential of the
/// session's vaults for the server's host, else none.
async fn endpoint(
    http: &HttpRequests,
    access: &SessionAccess,
    server: &McpServer,
) -> Result<(Endpoint, Vec<(String, String)>), String> {
    let url = reqwest::Url::parse(&server.url).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("only http and https URLs are supported".into());
    }
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .to_ascii_lowercase();
    let port = url.port_or_known_default().unwrap_or(443);
    let mut authorization = None;
    let mut forms = Vec::new();
    let named = match &server.credential {
        Some(name) => Some(name.clone()),
        None => http
            .bearer_for(access, &host, port)
            .await
            .map_err(|o| o.text)?,
    };
    if let Some(name) = &named {
        let c = http
            .credentials(access, std::slice::from_ref(name))
            .await
            .map_err(|o| o.text)?
            .remove(0);
        if url.scheme() == "http" && !is_loopback(&host) {
            return Err(
                "its credential is sent only over https (plain http only to this machine's loopback)"
                    .into(),
            );
        }
        if !host_allowed(&c.hosts, &host, port) {
            return Err(format!(
                "the credential {name} may not be sent to {host}:{port}; it is allowed for {}",
                c.hosts.join(", ")
            ));
        }
        let value = substituted(&c);
        authorization = Some(match c.kind {
            crate::credentials::vault::Kind::Basic => format!("Basic {value}"),
            _ => format!("Bearer {value}"),
        });
        // Every form a server could echo it in: as is, as sent, percent- and JSON-encoded.
        let raw = c.value.expose().to_string();
        for f in [
            percent_encoded(&raw),
            percent_encoded(&value),
            json_escaped(&raw),
            raw,
            value,
        ] {
            if !forms.iter().any(|(_, g)| *g == f) {
                forms.push((name.clone(), f));
            }
        }
    }
    // A clear error for a refused address (the resolver refuses it again at connect time).
    http.policy()
        .resolve(&host, port)
        .await
        .map_err(|why| format!("{host}:{port} cannot be reached: {why}"))?;
    Ok((
        Endpoint {
            url: server.url.clone(),
            authorization,
            redact: forms.clone(),
        },
        forms,
    ))
}

/// Lists `server`'s tools for the listing job `request_id`. Never fails: a server that cannot
/// be listed gives a record with its `error`, which the model is told about.
pub async fn list(
    http: &HttpRequests,
    access: &SessionAccess,
    server: &McpServer,
    request_id: &str,
) -> McpToolsListed {
    let mut record = McpToolsListed {
        request_id: request_id.into(),
        mcp_server_name: server.name.clone(),
        url: server.url.clone(),
        tools: vec![],
        skipped: vec![],
        error: None,
    };
    let (endpoint, forms) = match endpoint(http, access, server).await {
        Ok(e) => e,
        Err(why) => {
            record.error = Some(why);
            return record;
        }
    };
    match mcp::list_tools(http.client(), &endpoint, MAX_MCP_TOOLS).await {
        Ok(tools) => {
            let mut bytes = 0;
            for t in tools {
                let tool = match recorded_tool(&t, &forms) {
                    Ok(tool) => tool,
                    Err(why) => {
                        record.skipped.push(why);
                        continue;
                    }
                };
                let json = serde_json::to_string(&tool).unwrap_or_default();
                if placeholders::redact(&json, &forms) != json {
                    // A server that echoes the credential into its listing: the tool is left
                    // out whole (its name may be the echo, so it is not named either).
                    record
                        .skipped
                        .push("a tool whose listing contains this session's credential".into());
                } else if record.tools.iter().any(|o| o.name == tool.name) {
                    record.skipped.push(format!("{}: listed twice", tool.name));
                } else if bytes + json.len() > MAX_LISTING {
                    record.skipped.push(format!(
                        "{}: past the listing's budget of {MAX_LISTING} bytes",
                        tool.name
                    ));
                } else {
                    bytes += json.len();
                    record.tools.push(tool);
                }
            }
        }
        Err(e) => record.error = Some(placeholders::redact(&e.to_string(), &forms)),
    }
    record
}

/// A listed tool as herd records it, or why it is left out.
fn recorded_tool(t: &Value, forms: &[(String, String)]) -> Result<McpTool, String> {
    let name = t.get("name").and_then(Value::as_str).unwrap_or("");
    // Redacted before it is cut, so no prefix of the credential is kept.
    let shown: String = placeholders::redact(name, forms).chars().take(80).collect();
    if !valid_tool_name(name) {
        return Err(format!(
            "{shown:?}: not a name a model can call (1 to 64 letters, digits, _ or -)"
        ));
    }
    let schema = t
        .get("inputSchema")
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("object"))
        .ok_or_else(|| format!("{shown}: no object inputSchema"))?;
    if schema.to_string().len() > MAX_SCHEMA {
        return Err(format!("{shown}: inputSchema over {MAX_SCHEMA} bytes"));
    }
    if schema.get("properties").is_some_and(|p| !p.is_object()) {
        return Err(format!("{shown}: inputSchema properties is not an object"));
    }
    let description = t.get("description").and_then(Value::as_str).map(|d| {
        let mut end = d.len().min(MAX_DESCRIPTION);
        while !d.is_char_boundary(end) {
            end -= 1;
        }
        d[..end].to_string()
    });
    Ok(McpTool {
        name: name.into(),
        description,
        input_schema: schema.clone(),
    })
}

/// Runs one call of `server`'s tool `name`. Every failure (unreachable, hanging, garbage) is
/// an error result the model sees; none carries the credential.
pub async fn call(
    http: &HttpRequests,
    access: &SessionAccess,
    server: &McpServer,
    name: &str,
    input: &Value,
    timeout: std::time::Duration,
) -> ToolOutcome {
    let (endpoint, forms) = match endpoint(http, access, server).await {
        Ok(e) => e,
        Err(why) => {
            return ToolOutcome {
                text: format!("The MCP server {:?} cannot be used: {why}", server.name),
                is_error: true,
            };
        }
    };
    let arguments = if input.is_null() {
        Value::Object(Default::default())
    } else {
        input.clone()
    };
    let (text, is_error) =
        match mcp::call_tool(http.client(), &endpoint, name, &arguments, timeout).await {
            Ok(result) => mcp::result_text(&result),
            Err(e) => (
                format!("The call to the MCP server {:?} failed: {e}", server.name),
                true,
            ),
        };
    let mut text = placeholders::redact(&text, &forms);
    if text.len() > MAX_RESULT {
        let mut end = MAX_RESULT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(&format!("\n[result truncated at {MAX_RESULT} bytes]"));
    }
    ToolOutcome { text, is_error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listed_tools_are_checked_before_they_are_recorded() {
        let ok = json!({"name": "lookup", "description": "d", "inputSchema": {"type": "object"}});
        assert_eq!(recorded_tool(&ok, &[]).unwrap().name, "lookup");
        for (bad, says) in [
            (
                json!({"name": "a.b", "inputSchema": {"type": "object"}}),
                "not a name",
            ),
            (json!({"name": "x"}), "no object inputSchema"),
            (
                json!({"name": "x", "inputSchema": {"type": "string"}}),
                "no object inputSchema",
            ),
            (
                json!({"name": "x", "inputSchema": {"type": "object", "d": "y".repeat(70_000)}}),
                "over",
            ),
        ] {
            let e = recorded_tool(&bad, &[]).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = json!({"name": "x", "description": "é".repeat(5000), "inputSchema": {"type": "object"}});
        assert!(
            recorded_tool(&long, &[])
                .unwrap()
                .description
                .unwrap()
                .len()
                <= MAX_DESCRIPTION
        );
        // A name that carries the credential is never shown, not even its prefix.
        let forms = vec![("T".to_string(), "sekrit-token-value".to_string())];
        let echo = json!({"name": "sekrit-token-value.x"});
        let e = recorded_tool(&echo, &forms).unwrap_err();
        assert!(!e.contains("sekrit"), "{e}");
    }
}
