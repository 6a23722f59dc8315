//! The `http_request` tool: an HTTP request the hand makes itself, outside the sandbox, with
//! `{{secret:NAME}}` placeholders filled from the session's vaults.
//!
//! The sandbox never sees a value: the model writes a placeholder, the hand substitutes it only
//! when the request goes to a host the credential allows, and every value it substituted is
//! redacted from the response before the model sees it. The hand can reach more of the network
//! than a sandbox, so the tool reaches only hosts the session allows: those of its
//! environment's `allowed_hosts` and of its vaults' credentials. Redirects are not followed (a
//! redirect could carry a header to another host); the model sees the 3xx and decides.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::address::AddressPolicy;
use super::job::SessionAccess;
use super::tools::ToolOutcome;
use crate::credentials::placeholders;
use crate::credentials::vault::{Credential, Kind, Vault, VaultError, VaultKey};

/// The tool's name.
pub const TOOL: &str = "http_request";

/// The largest request body.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// The most of a response body kept for the model.
pub const MAX_RESPONSE_BODY: usize = 256 * 1024;

/// The most different secrets in one request.
pub const MAX_PLACEHOLDERS: usize = 16;

/// The longest URL, and the most header bytes, after substitution.
pub const MAX_URL_AND_HEADERS: usize = 64 * 1024;

/// Headers the model may not set: they decide routing and framing, which must follow the URL
/// that was checked.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "transfer-encoding",
    "content-length",
    "te",
    "upgrade",
    "forwarded",
    "x-forwarded-host",
];

/// True for this machine's own addresses, where plain http cannot be overheard.
pub(crate) fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The percent-encoded form of a value (every byte outside the unreserved set), as it appears
/// when a URL is echoed back.
pub(crate) fn percent_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Placeholders written in a request, counting repeats.
fn placeholder_count(input: &Input) -> usize {
    let n = |t: &str| t.matches("{{secret:").count();
    n(&input.url)
        + input.headers.values().map(|v| n(v)).sum::<usize>()
        + input.body.as_deref().map_or(0, n)
}

/// The input, as the model writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// Makes `http_request` calls for a hand.
#[derive(Clone)]
pub struct HttpRequests {
    http: reqwest::Client,
    vault: Option<(Vault, VaultKey)>,
    policy: AddressPolicy,
}

impl std::fmt::Debug for HttpRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequests")
            .field("vault", &self.vault.is_some())
            .finish()
    }
}

fn err(text: impl Into<String>) -> ToolOutcome {
    ToolOutcome {
        text: text.into(),
        is_error: true,
    }
}

/// True when `host` (lower case) on `port` is covered by an allowed-host entry: `host:port`,
/// or `host` alone, which means its web ports, 443 (https) and 80 (http), and no other.
/// IPv6 addresses match with or without brackets (`[::1]:80`, `::1`).
pub(crate) fn host_allowed(entries: &[String], host: &str, port: u16) -> bool {
    let host = host.trim_matches(['[', ']']);
    entries.iter().any(|e| {
        let (h, p) = split_entry(e);
        h == host && p.map_or(matches!(port, 443 | 80), |p| p == port)
    })
}

/// An allow-list entry's host (without brackets) and port, if it names one.
fn split_entry(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match entry.split_once(':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some((h, p)) if !p.contains(':') => (h, p.parse().ok()),
        _ => (entry, None),
    }
}

impl HttpRequests {
    /// A tool with the vault store and key (`None`: no secrets can be used on this hand),
    /// connecting only where the address policy allows.
    pub fn new(
        vault: Option<(Vault, VaultKey)>,
        policy: AddressPolicy,
    ) -> Result<Self, reqwest::Error> {
        crate::tls::install_crypto();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // The hand's HTTP(S)_PROXY must not see requests that carry secrets.
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            // Names resolve through the policy: the address connected to is the one checked.
            .dns_resolver(Arc::new(policy.clone()))
            .build()?;
        Ok(Self {
            http,
            vault,
            policy,
        })
    }

    /// Runs one call. Every failure is an outcome the model sees; none carries a secret.
    pub async fn run(&self, access: &SessionAccess, input: &Value) -> ToolOutcome {
        match self.try_run(access, input).await {
            Ok(o) | Err(o) => o,
        }
    }

    async fn try_run(
        &self,
        access: &SessionAccess,
        input: &Value,
    ) -> Result<ToolOutcome, ToolOutcome> {
        let input: Input = serde_json::from_value(input.clone())
            .map_err(|e| err(format!("invalid http_request input: {e}; expected {{\"url\": \"https://…\", \"method\": \"GET\", \"headers\": {{…}}, \"body\": \"…\"}}")))?;
        let method = input
            .method
            .as_deref()
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let method = match method.as_str() {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => {
                reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| err(e.to_string()))?
            }
            other => return Err(err(format!("unsupported method {other:?}"))),
        };
        if input
            .body
            .as_ref()
            .is_some_and(|b| b.len() > MAX_REQUEST_BODY)
        {
            return Err(err(format!(
                "the request body is over {MAX_REQUEST_BODY} bytes"
            )));
        }
        // Where it goes: a plain URL, placeholders only after the host.
        let url = reqwest::Url::parse(&input.url)
            .map_err(|e| err(format!("invalid url {:?}: {e}", input.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err("only http and https URLs are supported"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                "credentials in the URL are not allowed; use a {{secret:NAME}} header",
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| err("the url has no host"))?
            .to_ascii_lowercase();
        if host.contains("{{") || host.contains("%7b") {
            return Err(err("a placeholder cannot be part of the host"));
        }
        let port = url.port_or_known_default().unwrap_or(443);

        // Which secrets it uses.
        let mut used: Vec<String> = Vec::new();
        let mut scan = |text: &str| -> Result<(), ToolOutcome> {
            for n in placeholders::names(text).map_err(|e| err(e.to_string()))? {
                if !used.contains(&n) {
                    used.push(n);
                }
            }
            Ok(())
        };
        scan(&input.url)?;
        for (k, v) in &input.headers {
            if k.contains("{{") {
                return Err(err("a placeholder cannot be a header name"));
            }
            // These would let the request be routed or framed differently from the URL that
            // was checked (Host: another virtual host behind the same front end).
            let lower = k.to_ascii_lowercase();
            if FORBIDDEN_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
                return Err(err(format!(
                    "the header {k:?} cannot be set; the URL decides where the request goes"
                )));
            }
            scan(v)?;
        }
        if let Some(b) = &input.body {
            scan(b)?;
        }
        if used.len() > MAX_PLACEHOLDERS {
            return Err(err(format!(
                "at most {MAX_PLACEHOLDERS} different secrets in one request"
            )));
        }
        if placeholder_count(&input) > 4 * MAX_PLACEHOLDERS {
            return Err(err(format!(
                "at most {} placeholders in one request",
                4 * MAX_PLACEHOLDERS
            )));
        }
        let credentials = self.credentials(access, &used).await?;
        // The host must be allowed: by the session, or by a credential of its vaults.
        let mut reachable = access.allowed_hosts.clone();
        for c in &credentials {
            reachable.extend(c.hosts.iter().cloned());
        }
        if !credentials.is_empty() && url.scheme() == "http" && !is_loopback(&host) {
            return Err(err(
                "secrets are sent only over https (plain http only to this machine's loopback)",
            ));
        }
        for c in &credentials {
            if !host_allowed(&c.hosts, &host, port) {
                return Err(err(format!(
                    "secret {} may not be sent to {host}:{port}; it is allowed for {}",
                    c.name,
                    c.hosts.join(", ")
                )));
            }
        }
        if !host_allowed(&reachable, &host, port) && !self.vault_allows(access, &host, port).await?
        {
            return Err(err(format!(
                "{host}:{port} is not an allowed host for this session (its environment's allowed_hosts, or a credential's hosts in its vaults)"
            )));
        }

        // Where it really goes: the resolved addresses, checked here for a clear error (the
        // resolver checks again at connect time, so a name cannot change its answer between).
        if let Err(why) = self.policy.resolve(&host, port).await {
            return Err(err(format!("{host}:{port} cannot be reached: {why}")));
        }

        // Substitute, send, redact.
        let value_of = |name: &str| credentials.iter().find(|c| c.name == name).map(substituted);
        let url = placeholders::substitute(&input.url, value_of);
        let body = input
            .body
            .as_ref()
            .map(|b| placeholders::substitute(b, value_of));
        let headers: Vec<(String, String)> = input
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), placeholders::substitute(v, value_of)))
            .collect();
        let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if url.len() > MAX_URL_AND_HEADERS
            || header_bytes > MAX_URL_AND_HEADERS
            || body.as_ref().is_some_and(|b| b.len() > MAX_REQUEST_BODY)
        {
            return Err(err(format!(
                "with its secrets filled in, the request is too large (URL and headers at most {MAX_URL_AND_HEADERS} bytes each, body {MAX_REQUEST_BODY})"
            )));
        }
        let mut req = self.http.request(method, &url).timeout(Duration::from_secs(
            input.timeout_secs.unwrap_or(30).clamp(1, 120),
        ));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let forms: Vec<(String, String)> = credentials
            .iter()
            .flat_map(|c| {
                let raw = c.value.expose().to_string();
                let sub = substituted(c);
                [percent_encoded(&raw), percent_encoded(&sub), raw, sub]
                    .into_iter()
                    .map(|f| (c.name.clone(), f))
                    .collect::<Vec<_>>()
            })
            .collect();
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                // reqwest's errors name the URL, which may hold a substituted value: drop it.
                let text = format!("the request failed: {}", e.without_url());
                return Err(err(placeholders::redact(&text, &forms)));
            }
        };
        let status = response.status();
        let mut text = format!(
            "HTTP {} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        for name in ["content-type", "content-length", "location", "retry-after"] {
            if let Some(v) = response.headers().get(name).and_then(|v| v.to_str().ok()) {
                text += &format!("{name}: {v}\n");
            }
        }
        text.push('\n');
        // Redact before cutting, over enough extra bytes that no secret can straddle the cut:
        // a cut through a value would leave its unredacted prefix behind.
        let longest = forms.iter().map(|(_, f)| f.len()).max().unwrap_or(0);
        let (body, more) = read_capped(response, MAX_RESPONSE_BODY + longest).await;
        let redacted = placeholders::redact(&String::from_utf8_lossy(&body), &forms);
        let cut = more || body.len() > MAX_RESPONSE_BODY;
        let mut kept = redacted;
        if cut {
            let mut end = MAX_RESPONSE_BODY.min(kept.len());
            while !kept.is_char_boundary(end) {
                end -= 1;
            }
            kept.truncate(end);
            kept += &format!("\n[response truncated at {MAX_RESPONSE_BODY} bytes]");
        }
        text += &kept;
        Ok(ToolOutcome {
            text: placeholders::redact(&text, &forms),
            is_error: !status.is_success() && !status.is_redirection(),
        })
    }

    /// The client every request outside the sandbox goes through: no proxy, no redirects,
    /// names resolved through the address policy.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// The deployment's address policy.
    pub(crate) fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// Opens the named credentials from the session's vaults, in order.
    pub(crate) async fn credentials(
        &self,
        access: &SessionAccess,
        names: &[String],
    ) -> Result<Vec<Credential>, ToolOutcome> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let Some((vault, key)) = &self.vault else {
            return Err(err(
                "this hand holds no vault key, so no {{secret:…}} can be used here",
            ));
        };
        if access.vault_ids.is_empty() {
            return Err(err(
                "this session names no vaults, so no {{secret:…}} can be used",
            ));
        }
        let mut out = Vec::new();
        'names: for name in names {
            for v in &access.vault_ids {
                match vault.get(key, v, name).await {
                    Ok(c) => {
                        out.push(c);
                        continue 'names;
                    }
                    Err(VaultError::NotFound { .. }) => continue,
                    Err(e) => return Err(err(e.to_string())),
                }
            }
            return Err(err(format!(
                "unknown secret {name}: no vault of this session ({}) holds it",
                access.vault_ids.join(", ")
            )));
        }
        Ok(out)
    }

    /// True when some credential of the session's vaults allows the host.
    /// The name of the first `static_bearer` credential of the session's vaults whose hosts
    /// cover `host:port` (how an MCP server without a named credential finds its token, as
    /// the hosted API matches a credential's `mcp_server_url`).
    pub(crate) async fn bearer_for(
        &self,
        access: &SessionAccess,
        host: &str,
        port: u16,
    ) -> Result<Option<String>, ToolOutcome> {
        let Some((vault, _)) = &self.vault else {
            return Ok(None);
        };
        for v in &access.vault_ids {
            let list = vault.list(v).await.map_err(|e| err(e.to_string()))?;
            if let Some(c) = list
                .iter()
                .find(|c| c.kind == Kind::StaticBearer && host_allowed(&c.hosts, host, port))
            {
                return Ok(Some(c.name.clone()));
            }
        }
        Ok(None)
    }

    async fn vault_allows(
        &self,
        access: &SessionAccess,
        host: &str,
        port: u16,
    ) -> Result<bool, ToolOutcome> {
        let Some((vault, _)) = &self.vault else {
            return Ok(false);
        };
        for v in &access.vault_ids {
            let list = vault.list(v).await.map_err(|e| err(e.to_string()))?;
            if list.iter().any(|c| host_allowed(&c.hosts, host, port)) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What a credential's placeholder turns into.
pub(crate) fn substituted(c: &Credential) -> String {
    match c.kind {
        Kind::Basic => base64::engine::general_purpose::STANDARD.encode(c.value.expose()),
        Kind::StaticBearer | Kind::Header | Kind::Git => c.value.expose().to_string(),
    }
}

pub(crate) async fn read_capped(mut response: reqwest::Response, cap: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > cap {
            body.extend_from_slice(&chunk[..cap - body.len()]);
            return (body, true);
        }
        body.extend_from_slice(&chunk);
    }
    (body, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_forms_and_loopback() {
        assert_eq!(percent_encoded("a b/c~"), "a%20b%2Fc~");
        assert!(is_loopback("127.0.0.1") && is_loopback("[::1]") && is_loopback("localhost"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("example.com"));
    }

    #[test]
    fn hosts_match_with_or_without_a_port() {
        let entries = vec!["api.example.com".to_string(), "127.0.0.1:8080".to_string()];
        assert!(host_allowed(&entries, "api.example.com", 443));
        assert!(host_allowed(&entries, "api.example.com", 80));
        assert!(!host_allowed(&entries, "api.example.com", 8443));
        assert!(!host_allowed(&entries, "api.example.com", 22));
        assert!(host_allowed(&entries, "127.0.0.1", 8080));
        assert!(!host_allowed(&entries, "127.0.0.1", 8081));
        assert!(!host_allowed(&entries, "example.com", 443));
        assert!(!host_allowed(&entries, "evil-api.example.com", 443));
        let v6 = vec!["[::1]:8080".to_string(), "fd00::1".to_string()];
        assert!(host_allowed(&v6, "::1", 8080) && host_allowed(&v6, "[::1]", 8080));
        assert!(!host_allowed(&v6, "::1", 80));
        assert!(host_allowed(&v6, "fd00::1", 443) && !host_allowed(&v6, "fd00::1", 22));
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_anything_is_sent() {
        let tool = HttpRequests::new(None, AddressPolicy::default()).unwrap();
        let access = SessionAccess {
            vault_ids: vec![],
            resources: vec![],
            allowed_hosts: vec!["127.0.0.1:9".into()],
            ..Default::default()
        };
        let cases = [
            (serde_json::json!({"url": "ftp://x"}), "only http and https"),
            (serde_json::json!({"url": "not a url"}), "invalid url"),
            (
                serde_json::json!({"uri": "http://x"}),
                "invalid http_request input",
            ),
            (
                serde_json::json!({"url": "http://u:p@127.0.0.1:9/"}),
                "credentials in the URL",
            ),
            (
                serde_json::json!({"url": "http://127.0.0.1:9/", "method": "TRACE"}),
                "unsupported method",
            ),
            (
                serde_json::json!({"url": "http://127.0.0.1:9/", "headers": {"X": "{{secret:T"}}),
                "not closed",
            ),
            (
                serde_json::json!({"url": "http://127.0.0.1:9/", "headers": {"X": "{{secret:T}}"}}),
                "no vault key",
            ),
            (
                serde_json::json!({"url": "http://10.0.0.1/"}),
                "not an allowed host",
            ),
            (
                serde_json::json!({"url": "http://127.0.0.1:9/", "body": "x".repeat(MAX_REQUEST_BODY + 1)}),
                "over",
            ),
            (
                serde_json::json!({"url": "http://127.0.0.1:9/", "headers": {"Host": "elsewhere"}}),
                "cannot be set",
            ),
            (
                serde_json::json!({"url": "http://127.0.0.1:9/", "headers": {"proxy-authorization": "x"}}),
                "cannot be set",
            ),
            (
                serde_json::json!({"url": "http://127.0.0.1:9/", "body": "{{secret:A}}".repeat(100)}),
                "placeholders in one request",
            ),
        ];
        for (input, want) in cases {
            let o = tool.run(&access, &input).await;
            assert!(o.is_error, "{input}");
            assert!(o.text.contains(want), "{input}: {}", o.text);
        }
    }
}
