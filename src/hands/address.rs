//! Which network addresses the hand connects to on a sandbox's behalf (N14).
//!
//! An allow-list names hosts, but a name can resolve to anything: `localhost`, the cloud
//! metadata address `169.254.169.254`, a private service, or NATS itself. So every connection
//! the hand makes for a session (`http_request`, the egress proxy, the git helper's proxy) is
//! checked on the *resolved* address, and made to exactly the address that was checked, so a
//! name cannot resolve to a public address for the check and a private one for the connect
//! (DNS rebinding). Loopback, link-local, private, shared (CGNAT), unspecified, multicast and
//! broadcast addresses are refused unless the operator allows a range (`herd hands
//! --allow-private-range 10.1.2.0/24`), for a package mirror on the LAN, say.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A CIDR range, `10.0.0.0/8` (a bare address is the /32 or /128 of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    net: IpAddr,
    prefix: u8,
}

/// Why a range did not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid address range {0:?}: expected an address or address/prefix, like 10.1.2.0/24 or fd00::/8"
)]
pub struct RangeError(String);

impl std::str::FromStr for Range {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RangeError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { net, prefix })
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Range {
    /// True when `ip` lies in the range (an IPv4-mapped IPv6 address counts as its IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d`: a mapped loopback is still loopback.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// What kind of special address `ip` is, if it is one a sandbox must not reach by default.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(a) => special_v4(a),
        IpAddr::V6(a) => special_v6(a),
    }
}

fn special_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [o0, o1, ..] = a.octets();
    if a.is_loopback() {
        Some("a loopback address")
    } else if a.is_link_local() {
        Some("a link-local address (where cloud metadata services live)")
    } else if a.is_private() {
        Some("a private address")
    } else if o0 == 100 && (64..128).contains(&o1) {
        Some("a shared (CGNAT) address")
    } else if o0 == 0 || a.is_unspecified() {
        Some("an unspecified address")
    } else if a.is_multicast() || a.is_broadcast() || o0 >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else {
        None
    }
}

fn special_v6(a: Ipv6Addr) -> Option<&'static str> {
    let seg = a.segments();
    let first = seg[0];
    // Forms that carry an IPv4 address (NAT64, 6to4, IPv4-compatible): the embedded address
    // decides, so 64:ff9b::7f00:1 is loopback too.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return special_v4(embedded(seg[6], seg[7]));
    }
    if seg[..3] == [0x64, 0xff9b, 1] {
        return Some("a local-use NAT64 address");
    }
    if first == 0x2002 {
        return special_v4(embedded(seg[1], seg[2]));
    }
    if seg[..6] == [0; 6] && !a.is_loopback() && !a.is_unspecified() {
        return Some("an IPv4-compatible address (deprecated)");
    }
    if a.is_loopback() {
        Some("a loopback address")
    } else if a.is_unspecified() {
        Some("an unspecified address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address (where cloud metadata services live)")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a unique-local (private) address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// True when `ip` is one of this host's own addresses (its public address too, where NATS or
/// an exporter may listen on every interface): only a local address can be bound.
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((canonical(ip), 0)).is_ok()
}

/// The operator's address policy: special addresses are refused unless a range allows them.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Arc<Vec<Range>>,
}

impl AddressPolicy {
    /// A policy that also allows `ranges` (the deployment's `--allow-private-range`).
    pub fn new(ranges: Vec<Range>) -> Self {
        Self {
            allowed: Arc::new(ranges),
        }
    }

    /// Why `ip` may not be reached, or `None` when it may.
    pub fn refusal(&self, host: &str, ip: IpAddr) -> Option<String> {
        let kind = special(ip).or_else(|| is_local(ip).then_some("an address of this host"))?;
        if self.allowed.iter().any(|r| r.contains(ip)) {
            return None;
        }
        let what = if host.parse::<IpAddr>().is_ok() {
            format!("{ip} is {kind}")
        } else {
            format!("{host} resolves to {ip}, {kind}")
        };
        Some(format!(
            "{what}, which this deployment does not let sandboxes reach (an operator can allow a range with herd hands --allow-private-range)"
        ))
    }

    /// The addresses of `host:port` the hand may connect to: every address the name resolves
    /// to must be allowed (a name with one private address among public ones is refused
    /// whole), and the caller connects to exactly these.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_matches(['[', ']']);
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| format!("cannot resolve {bare}: {e}"))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(format!("{bare} has no address"));
        }
        for a in &addrs {
            if let Some(why) = self.refusal(bare, a.ip()) {
                return Err(why);
            }
        }
        Ok(addrs)
    }
}

/// reqwest resolves through the policy, so the address `http_request` connects to is the one
/// that was checked (reqwest skips resolvers for IP literals; the tool checks those first).
impl reqwest::dns::Resolve for AddressPolicy {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.clone();
        Box::pin(async move {
            let addrs = policy.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_addresses_are_refused_unless_a_range_allows_them() {
        let strict = AddressPolicy::default();
        for a in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "10.1.2.3",
            "172.17.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(strict.refusal(a, ip(a)).is_some(), "{a} must be refused");
        }
        for a in [
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
            "64:ff9b:1::a00:1",
        ] {
            assert!(strict.refusal(a, ip(a)).is_some(), "{a} must be refused");
        }
        for a in [
            "1.1.1.1",
            "203.0.113.80",
            "2606:4700::1111",
            "100.128.0.1",
            "64:ff9b::101:101",
        ] {
            assert!(strict.refusal(a, ip(a)).is_none(), "{a} is public");
        }
        let lan = AddressPolicy::new(vec!["10.1.2.0/24".parse().unwrap(), "::1".parse().unwrap()]);
        assert!(lan.refusal("x", ip("10.1.2.200")).is_none());
        assert!(lan.refusal("x", ip("10.1.3.1")).is_some());
        assert!(lan.refusal("x", ip("::1")).is_none());
        let why = strict.refusal("localhost", ip("127.0.0.1")).unwrap();
        assert!(
            why.contains("localhost resolves to 127.0.0.1, a loopback"),
            "{why}"
        );
    }

    #[test]
    fn this_hosts_own_addresses_are_refused() {
        assert!(is_local(ip("127.0.0.1")) && !is_local(ip("1.1.1.1")));
        // The address this host would use outward (no packet is sent for a UDP connect).
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        if s.connect("203.0.113.80:9").is_ok() {
            let own = s.local_addr().unwrap().ip();
            let why = AddressPolicy::default()
                .refusal(&own.to_string(), own)
                .unwrap();
            assert!(why.contains(&format!("{own} is ")), "{why}");
        }
    }

    #[test]
    fn ranges_parse_strictly() {
        assert_eq!(
            "10.0.0.0/8".parse::<Range>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "127.0.0.1".parse::<Range>().unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert!(
            "0.0.0.0/0"
                .parse::<Range>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "::/129", "10.0.0.0/"] {
            assert!(bad.parse::<Range>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn names_are_checked_on_what_they_resolve_to() {
        let strict = AddressPolicy::default();
        let e = strict.resolve("localhost", 80).await.unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = strict.resolve("[::1]", 80).await.unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let open = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        let a = open.resolve("127.0.0.1", 8080).await.unwrap();
        assert_eq!(a, vec!["127.0.0.1:8080".parse().unwrap()]);
    }
}
