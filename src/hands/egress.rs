//! Optional egress for sandboxes that need it (package installs): an allow-listing HTTP(S)
//! proxy on an internal Docker network.
//!
//! A sandbox whose environment asks for `networking: limited` joins the hand's network
//! `herd-egress-<host>`, which Docker creates `internal` (no route out) and without
//! inter-container traffic (one sandbox cannot reach another). The only thing it can reach
//! there is the host side of the bridge, where this proxy listens; `HTTP_PROXY`/`HTTPS_PROXY`
//! point at it. The proxy knows each sandbox by its address on that network and lets it reach
//! only its session's `allowed_hosts`: `CONNECT host:port` for https (a tunnel; the proxy never
//! sees inside TLS) and absolute-URL requests for plain http. Everything else gets 403. Every
//! other sandbox keeps `network_mode: none`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bollard::Docker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::sandbox::SandboxError;
use crate::tasks::AbortOnDrop;

/// The largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;

/// Which hosts each sandbox address may reach.
type Rules = Arc<Mutex<HashMap<IpAddr, Vec<String>>>>;

/// The hand's egress network and proxy.
pub struct Egress {
    network: String,
    proxy: String,
    rules: Rules,
    _server: AbortOnDrop,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("network", &self.network)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

fn docker_err(e: bollard::errors::Error) -> SandboxError {
    SandboxError::Docker(e.to_string())
}

impl Egress {
    /// Creates (or reuses) the internal network `herd-egress-<host>` and starts the proxy on
    /// its gateway address.
    pub async fn start(docker: &Docker, host: &str) -> Result<Self, SandboxError> {
        let network = format!("herd-egress-{host}");
        let gateway = match docker
            .inspect_network(
                &network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) => gateway_of(&n),
            Err(_) => {
                docker
                    .create_network(bollard::models::NetworkCreateRequest {
                        name: network.clone(),
                        internal: Some(true),
                        options: Some(HashMap::from([(
                            "com.docker.network.bridge.enable_icc".to_string(),
                            "false".to_string(),
                        )])),
                        labels: Some(HashMap::from([(
                            "herd.managed".to_string(),
                            "true".to_string(),
                        )])),
                        ..Default::default()
                    })
                    .await
                    .map_err(docker_err)?;
                let n = docker
                    .inspect_network(
                        &network,
                        None::<bollard::query_parameters::InspectNetworkOptions>,
                    )
                    .await
                    .map_err(docker_err)?;
                gateway_of(&n)
            }
        }
        .ok_or_else(|| SandboxError::Docker(format!("network {network} has no gateway address")))?;
        let listener = TcpListener::bind((gateway, 0))
            .await
            .map_err(|e| SandboxError::Docker(format!("cannot listen on {gateway}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| SandboxError::Docker(e.to_string()))?
            .port();
        let rules: Rules = Arc::default();
        let serving = rules.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = listener.accept().await else {
                    continue;
                };
                let allowed = serving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&peer.ip())
                    .cloned()
                    .unwrap_or_default();
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, &allowed).await {
                        tracing::debug!(%peer, error = %e, "Egress proxy connection ended.");
                    }
                });
            }
        });
        let proxy = format!("http://{gateway}:{port}");
        tracing::info!(%network, %proxy, "Egress proxy is listening.");
        Ok(Self {
            network,
            proxy,
            rules,
            _server: AbortOnDrop(server),
        })
    }

    /// Removes the network (best effort: Docker refuses while sandboxes are attached).
    pub async fn remove(&self, docker: &Docker) {
        let _ = docker.remove_network(&self.network).await;
    }

    /// The Docker network sandboxes with egress join.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The proxy URL for the sandbox's `HTTP(S)_PROXY`.
    pub fn proxy_url(&self) -> &str {
        &self.proxy
    }

    /// Lets the sandbox at `ip` reach `hosts` (replacing what that address had).
    pub fn allow(&self, ip: IpAddr, hosts: Vec<String>) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ip, hosts);
    }
}

fn gateway_of(n: &bollard::models::NetworkInspect) -> Option<IpAddr> {
    n.ipam
        .as_ref()?
        .config
        .as_ref()?
        .iter()
        .find_map(|c| c.gateway.as_ref()?.parse().ok())
}

/// Where a proxy request wants to go: (host, port, the head to forward for plain http).
fn target(head: &str) -> Result<(String, u16, Option<String>), String> {
    let first = head.lines().next().unwrap_or("");
    let mut parts = first.split(' ');
    let (method, uri, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = uri.rsplit_once(':').ok_or("CONNECT needs host:port")?;
        let port = port.parse().map_err(|_| "bad port")?;
        return Ok((
            host.trim_matches(['[', ']']).to_ascii_lowercase(),
            port,
            None,
        ));
    }
    let url = reqwest::Url::parse(uri).map_err(|_| "a proxy request needs an absolute http URL")?;
    if url.scheme() != "http" {
        return Err("only http URLs are forwarded; use CONNECT for https".into());
    }
    let host = url.host_str().ok_or("no host")?.to_ascii_lowercase();
    let port = url.port_or_known_default().unwrap_or(80);
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    // Origin-form request line; hop-by-hop proxy headers dropped.
    let mut out = format!("{method} {path} {version}\r\n");
    for line in head.lines().skip(1) {
        let lower = line.to_ascii_lowercase();
        if line.is_empty() || lower.starts_with("proxy-") {
            continue;
        }
        out += line;
        out += "\r\n";
    }
    out += "\r\n";
    Ok((host.trim_matches(['[', ']']).to_string(), port, Some(out)))
}

/// Answers the sandbox with an error status and a line saying why.
async fn refuse(conn: &mut TcpStream, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("herd egress: {why}\n");
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(resp.as_bytes()).await
}

async fn serve(mut conn: TcpStream, allowed: &[String]) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return conn
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
                .await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let (host, port, forward) = match target(&head) {
        Ok(t) => t,
        Err(e) => return refuse(&mut conn, "400 Bad Request", &e).await,
    };
    if !super::http_request::host_allowed(allowed, &host, port) {
        let why = format!("{host}:{port} is not an allowed host for this sandbox");
        return refuse(&mut conn, "403 Forbidden", &why).await;
    }
    let mut upstream = match TcpStream::connect((host.as_str(), port)).await {
        Ok(u) => u,
        Err(e) => {
            let why = format!("cannot reach {host}:{port}: {e}");
            return refuse(&mut conn, "502 Bad Gateway", &why).await;
        }
    };
    match forward {
        None => {
            conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await?
        }
        Some(head) => upstream.write_all(head.as_bytes()).await?,
    }
    // Whatever followed the head (a request body, or the start of TLS).
    upstream.write_all(&buf[end..]).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_targets_are_read_from_the_request_head() {
        let (h, p, f) =
            target("CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n").unwrap();
        assert_eq!((h.as_str(), p, f), ("pypi.org", 443, None));
        let (h, p, f) = target(
            "GET http://deb.debian.org/debian/x?y=1 HTTP/1.1\r\nHost: deb.debian.org\r\nProxy-Connection: keep-alive\r\n\r\n",
        )
        .unwrap();
        assert_eq!((h.as_str(), p), ("deb.debian.org", 80));
        let f = f.unwrap();
        assert!(f.starts_with("GET /debian/x?y=1 HTTP/1.1\r\n"), "{f}");
        assert!(!f.to_ascii_lowercase().contains("proxy-connection"));
        assert!(target("GET /relative HTTP/1.1\r\n\r\n").is_err());
        assert!(target("GET ftp://x/ HTTP/1.1\r\n\r\n").is_err());
        assert!(target("CONNECT nohostport HTTP/1.1\r\n\r\n").is_err());
    }
}
