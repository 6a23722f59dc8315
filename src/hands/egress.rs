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
//!
//! The boundary, in layers:
//! * **The bridge's host address reaches only the proxy.** Docker keeps a host address on an
//!   internal bridge, and packets to it take the host's INPUT chain, which Docker does not
//!   filter: a sandbox could reach every service listening on 0.0.0.0 (N12). The hand puts a
//!   chain on the bridge's interface that accepts the proxy's port and drops everything else,
//!   and refuses to offer egress when it cannot (fail closed).
//! * **No DNS.** Sandboxes on the network get an upstream resolver that answers nothing, so
//!   Docker's embedded resolver forwards no query out (N13); the proxy resolves names itself.
//! * **Where the proxy connects** is checked on the resolved address and made to it
//!   ([`super::address`]): no loopback, metadata or private address unless allowed (N14).
//! * **Bounded** (N15): at most [`MAX_CONNECTIONS`] connections per sandbox and
//!   [`MAX_TOTAL_CONNECTIONS`] in all (the hand's file descriptors), a request head
//!   within [`HEAD_TIMEOUT`], tunnels closed after [`IDLE_TIMEOUT`] without traffic, and a plain
//!   http connection carries one request, with its `Host` rewritten from the checked URL.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::address::AddressPolicy;
use super::sandbox::SandboxError;
use crate::tasks::AbortOnDrop;

/// The largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
/// Connections one sandbox may hold through the proxy at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections the proxy holds at once over all sandboxes: two descriptors each, so the hand
/// keeps room under the usual 1024-descriptor soft limit for Docker and NATS.
pub const MAX_TOTAL_CONNECTIONS: usize = 384;
/// How long a request head may take to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a tunnel may carry nothing in either direction before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What each sandbox address may reach, and how many connections it holds.
type Rules = Arc<Mutex<HashMap<IpAddr, Rule>>>;

#[derive(Debug, Default, Clone)]
struct Rule {
    hosts: Vec<String>,
    open: usize,
}

/// One held connection of a sandbox; dropping it frees the slot.
struct Slot {
    rules: Rules,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(r) = self
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.ip)
        {
            r.open = r.open.saturating_sub(1);
        }
    }
}

/// The hand's egress network and proxy.
pub struct Egress {
    network: String,
    proxy: String,
    rules: Rules,
    firewall: super::firewall::Firewall,
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
    /// Creates (or reuses) the internal network `herd-egress-<host>`, starts the proxy on its
    /// gateway address and closes the bridge to everything but the proxy's port. An error
    /// means no egress on this hand: sessions that ask for it get a tool error.
    pub async fn start(
        docker: &Docker,
        host: &str,
        policy: AddressPolicy,
    ) -> Result<Self, SandboxError> {
        let network = format!("herd-egress-{host}");
        let (id, gateway, named_bridge) = match docker
            .inspect_network(
                &network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) => {
                // A network of that name made by someone else must still be what herd makes.
                let icc = n
                    .options
                    .as_ref()
                    .and_then(|o| o.get("com.docker.network.bridge.enable_icc"))
                    .map(String::as_str);
                if n.internal != Some(true) || icc != Some("false") {
                    return Err(SandboxError::Docker(format!(
                        "network {network} exists but is not internal with inter-container traffic off; remove it (docker network rm {network}) and herd recreates it"
                    )));
                }
                (n.id.clone(), gateway_of(&n), bridge_of(&n))
            }
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
                (n.id.clone(), gateway_of(&n), bridge_of(&n))
            }
        };
        let gateway = gateway.ok_or_else(|| {
            SandboxError::Docker(format!("network {network} has no gateway address"))
        })?;
        let id = id.ok_or_else(|| SandboxError::Docker(format!("network {network} has no id")))?;
        let listener = TcpListener::bind((gateway, 0))
            .await
            .map_err(|e| SandboxError::Docker(format!("cannot listen on {gateway}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| SandboxError::Docker(e.to_string()))?
            .port();
        // Docker names a network's bridge br-<the first 12 characters of its id>, unless the
        // network names its own; the rule must name an interface that exists, or it would
        // match nothing and close nothing.
        let bridge = named_bridge.unwrap_or_else(|| format!("br-{}", id.get(..12).unwrap_or(&id)));
        if !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists()
        {
            return Err(SandboxError::Docker(format!(
                "the egress network's bridge {bridge} is not an interface in this network namespace (is the hand in a container?)"
            )));
        }
        super::firewall::Firewall::sweep_stale().await;
        let firewall = super::firewall::Firewall::close(&bridge, gateway, port)
            .await
            .map_err(|e| {
                SandboxError::Docker(format!(
                    "cannot close the egress bridge {bridge} to all but the proxy: {e}"
                ))
            })?;
        let rules: Rules = Arc::default();
        let serving = rules.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut conn, peer)) = listener.accept().await else {
                    continue;
                };
                let (allowed, slot) = {
                    let mut rules = serving.lock().unwrap_or_else(|p| p.into_inner());
                    let total: usize = rules.values().map(|r| r.open).sum();
                    match rules.get_mut(&peer.ip()) {
                        Some(_) if total >= MAX_TOTAL_CONNECTIONS => (
                            Err((
                                "429 Too Many Requests",
                                format!(
                                    "the proxy holds {MAX_TOTAL_CONNECTIONS} connections for this hand's sandboxes; try again shortly"
                                ),
                            )),
                            None,
                        ),
                        Some(r) if r.open < MAX_CONNECTIONS => {
                            r.open += 1;
                            let slot = Slot {
                                rules: serving.clone(),
                                ip: peer.ip(),
                            };
                            (Ok(r.hosts.clone()), Some(slot))
                        }
                        Some(_) => (
                            Err((
                                "429 Too Many Requests",
                                format!(
                                    "this sandbox already holds {MAX_CONNECTIONS} connections through the proxy"
                                ),
                            )),
                            None,
                        ),
                        // Not a sandbox of this hand (a stale address, or the host itself):
                        // answered at once, so it holds nothing.
                        None => (
                            Err((
                                "403 Forbidden",
                                "this address is not a sandbox of this hand".to_string(),
                            )),
                            None,
                        ),
                    }
                };
                let policy = policy.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let result = match allowed {
                        Ok(allowed) => serve(conn, &allowed, &policy).await,
                        Err((status, why)) => refuse(&mut conn, status, &why).await,
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "Egress proxy connection ended.");
                    }
                });
            }
        });
        let proxy = format!("http://{gateway}:{port}");
        tracing::info!(%network, %proxy, %bridge, "Egress proxy is listening; the bridge reaches nothing else on this host.");
        Ok(Self {
            network,
            proxy,
            rules,
            firewall,
            _server: AbortOnDrop(server),
        })
    }

    /// Removes the network and its firewall chain (best effort: Docker refuses while
    /// sandboxes are attached).
    pub async fn remove(&self, docker: &Docker) {
        if docker.remove_network(&self.network).await.is_ok() {
            self.firewall.open().await;
        }
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
            .entry(ip)
            .or_default()
            .hosts = hosts;
    }

    /// Forgets the address (its container is gone; Docker may give it to another).
    pub fn forget(&self, ip: IpAddr) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

fn bridge_of(n: &bollard::models::NetworkInspect) -> Option<String> {
    n.options
        .as_ref()?
        .get("com.docker.network.bridge.name")
        .cloned()
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
    // Origin-form request line; hop-by-hop and proxy headers dropped, `Host` set from the
    // checked URL (the sandbox's own would reach another virtual host behind the same front
    // end), one request per connection.
    let mut out = format!("{method} {path} {version}\r\n");
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    out += &format!("Host: {host_header}\r\nConnection: close\r\n");
    let mut lengths = 0;
    for line in head.split("\r\n").skip(1) {
        if line.is_empty() {
            continue;
        }
        // Only plain `Name: value` lines: a folded line, a bare CR or LF, or a name with
        // space before its colon is read differently by different servers (smuggling).
        let (name, _) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header line {line:?}"))?;
        if line.starts_with([' ', '\t'])
            || line.contains(['\r', '\n'])
            || name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(format!("malformed header line {line:?}"));
        }
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("proxy-")
            || matches!(lower.as_str(), "host" | "connection" | "keep-alive")
        {
            continue;
        }
        if lower == "transfer-encoding" {
            return Err("chunked request bodies are not forwarded; send a Content-Length".into());
        }
        if lower == "content-length" {
            lengths += 1;
            if lengths > 1 {
                return Err("more than one Content-Length".into());
            }
        }
        out += line;
        out += "\r\n";
    }
    out += "\r\n";
    Ok((host.trim_matches(['[', ']']).to_string(), port, Some(out)))
}

/// The request body length a plain http head announces (0 without one).
fn content_length(head: &str) -> Result<u64, String> {
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            return v
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length {:?}", v.trim()));
        }
    }
    Ok(0)
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

async fn serve(
    mut conn: TcpStream,
    allowed: &[String],
    policy: &AddressPolicy,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read_head = async {
        loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(Some(i + 4));
            }
            if buf.len() > MAX_HEAD {
                return Ok(Some(0));
            }
        }
    };
    let end = match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Err(_) => {
            let why = format!(
                "no complete request head within {}s",
                HEAD_TIMEOUT.as_secs()
            );
            return refuse(&mut conn, "408 Request Timeout", &why).await;
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(0))) => {
            return conn
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
                .await;
        }
        Ok(Ok(Some(end))) => end,
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let (host, port, forward) = match target(&head) {
        Ok(t) => t,
        Err(e) => return refuse(&mut conn, "400 Bad Request", &e).await,
    };
    if !super::http_request::host_allowed(allowed, &host, port) {
        let why = format!(
            "{host}:{port} is not an allowed host for this sandbox (a host without a port means 443 and 80)"
        );
        return refuse(&mut conn, "403 Forbidden", &why).await;
    }
    let addrs = match policy.resolve(&host, port).await {
        Ok(a) => a,
        Err(why) => return refuse(&mut conn, "403 Forbidden", &why).await,
    };
    let mut upstream = match connect(&addrs).await {
        Ok(u) => u,
        Err(e) => {
            let why = format!("cannot reach {host}:{port}: {e}");
            return refuse(&mut conn, "502 Bad Gateway", &why).await;
        }
    };
    match forward {
        None => {
            conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await?;
            // Whatever followed the head (the start of TLS).
            upstream.write_all(&buf[end..]).await?;
            tunnel(conn, upstream, IDLE_TIMEOUT).await
        }
        Some(forward_head) => {
            let length = match content_length(&head) {
                Ok(l) => l,
                Err(e) => return refuse(&mut conn, "400 Bad Request", &e).await,
            };
            upstream.write_all(forward_head.as_bytes()).await?;
            // The body, exactly as long as announced; anything after it (a second request on
            // a keep-alive connection) is never forwarded.
            let early = &buf[end..];
            let first = early.len().min(length as usize);
            upstream.write_all(&early[..first]).await?;
            let (mut from_sandbox, mut to_sandbox) = conn.into_split();
            let (mut from_upstream, mut to_upstream) = upstream.into_split();
            let rest = length - first as u64;
            let up = async {
                let mut body = (&mut from_sandbox).take(rest);
                tokio::io::copy(&mut body, &mut to_upstream).await
            };
            let down = tokio::io::copy(&mut from_upstream, &mut to_sandbox);
            let both = async { tokio::try_join!(up, down).map(|_| ()) };
            match tokio::time::timeout(IDLE_TIMEOUT, both).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    }
}

/// Connects to the first of the checked addresses that answers.
async fn connect(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("no address");
    for a in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(last)
}

/// Copies both ways until either side closes or nothing moves for `idle`.
async fn tunnel(a: TcpStream, b: TcpStream, idle: Duration) -> std::io::Result<()> {
    let last = Arc::new(Mutex::new(tokio::time::Instant::now()));
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let one = pump_one(&mut ar, &mut bw, last.clone(), idle);
    let two = pump_one(&mut br, &mut aw, last, idle);
    // Each direction ends at its EOF (a half-close passes through) or when both went quiet.
    tokio::try_join!(one, two).map(|_| ())
}

/// Copies `r` to `w`; ends at EOF, or when neither direction has moved for `idle`.
async fn pump_one(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    last: Arc<Mutex<tokio::time::Instant>>,
    idle: Duration,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let tick = idle.min(Duration::from_secs(5));
    loop {
        match tokio::time::timeout(tick, r.read(&mut buf)).await {
            Ok(Ok(0)) => {
                let _ = w.shutdown().await;
                return Ok(());
            }
            Ok(Ok(n)) => {
                // A peer that stops reading holds the tunnel no longer than the idle timeout.
                match tokio::time::timeout(idle, w.write_all(&buf[..n])).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(()),
                }
                *last.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let quiet = last.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                if quiet >= idle {
                    return Ok(());
                }
            }
        }
    }
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
        // Smuggling shapes are refused, not forwarded.
        for bad in [
            "GET http://x/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 50\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nX-A: 1\nContent-Length: 5\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            assert!(target(bad).is_err(), "{bad:?}");
        }
    }
}
