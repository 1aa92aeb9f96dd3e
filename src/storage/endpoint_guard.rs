//! Which addresses a workspace's own object storage endpoint may reach. A workspace admin names
//! the endpoint and any member reads back what it answers (`download_s3_file`), so an endpoint
//! on the instance's own network would let users read internal services (SSRF). Loopback,
//! link-local, private and other non-public addresses are refused unless the operator lists
//! the host in `OBJECT_STORAGE_ALLOWED_HOSTS`. The check is on resolved addresses, at save time
//! for a clear answer and again on every connection (see `relay.rs`), so a name that resolves
//! elsewhere later (DNS rebinding) gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{redirect, Url};

/// `OBJECT_STORAGE_ALLOWED_HOSTS`, parsed. The default allows no internal address.
#[derive(Debug, Clone, Default)]
pub struct EndpointGuard {
    allowed: Arc<[Allowed]>,
}

/// One entry; `port: None` allows every port.
#[derive(Debug, PartialEq)]
enum Allowed {
    /// Trusted by name, whatever it resolves to: the operator vouches for its DNS.
    Name {
        name: String,
        port: Option<u16>,
    },
    Addresses {
        net: IpNet,
        port: Option<u16>,
    },
}

impl Allowed {
    fn parse(entry: &str) -> Option<Self> {
        if let Ok(net) = entry.parse::<IpNet>() {
            return Some(Self::Addresses { net, port: None });
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Some(Self::Addresses {
                net: ip.to_canonical().into(),
                port: None,
            });
        }
        if let Ok(addr) = entry.parse::<SocketAddr>() {
            return Some(Self::Addresses {
                net: addr.ip().to_canonical().into(),
                port: Some(addr.port()),
            });
        }
        let (name, port) = match entry.split_once(':') {
            Some((name, port)) => (name, Some(port.parse().ok()?)),
            None => (entry, None),
        };
        let name = normalize(name);
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        valid.then_some(Self::Name { name, port })
    }
}

/// The address a URL host is, if it is one rather than a name (IPv6 in brackets).
pub(super) fn literal_address(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// Host names compare without case and without the root's trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Why an endpoint may not be used; the text says what to change and never holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {0}")]
    Invalid(String),
    #[error(
        "{} is not a public address ({kind}): a workspace's object storage may use it only if \
         the instance allows it in OBJECT_STORAGE_ALLOWED_HOSTS",
        described(host, address)
    )]
    Refused {
        host: String,
        address: IpAddr,
        kind: &'static str,
    },
    #[error("cannot resolve the object storage host {host}: {detail}")]
    Unresolvable { host: String, detail: String },
}

fn described(host: &str, address: &IpAddr) -> String {
    if host.trim_matches(['[', ']']) == address.to_string() {
        address.to_string()
    } else {
        format!("{host} resolves to {address}, which")
    }
}

impl EndpointGuard {
    /// Parses `OBJECT_STORAGE_ALLOWED_HOSTS`: comma-separated `name`, `name:port`, IP address,
    /// `ip:port` (`[v6]:port`) or CIDR block.
    pub fn parse(setting: &str) -> Result<Self, String> {
        let allowed = setting
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                Allowed::parse(entry).ok_or_else(|| {
                    format!(
                        "OBJECT_STORAGE_ALLOWED_HOSTS: {entry:?} is not a host name, name:port, \
                         IP address, ip:port or CIDR block"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            allowed: allowed.into(),
        })
    }

    /// Checks the endpoint (`http(s)://host[:port]`) on the addresses it resolves to now.
    pub async fn check(&self, endpoint: &str) -> Result<CheckedEndpoint, EndpointError> {
        let url: Url = endpoint
            .trim_end_matches('/')
            .parse()
            .map_err(|e| EndpointError::Invalid(format!("{endpoint:?}: {e}")))?;
        let port = match url.scheme() {
            "http" | "https" => url.port_or_known_default().unwrap_or_default(),
            _ => {
                return Err(EndpointError::Invalid(format!(
                    "{endpoint:?}: the scheme must be http or https"
                )))
            }
        };
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| EndpointError::Invalid(format!("{endpoint:?}: a host is required")))?;
        match literal_address(host) {
            Some(ip) => self.check_address(host, ip, port)?,
            None => {
                self.resolve(host, port).await?;
            }
        }
        Ok(CheckedEndpoint {
            guard: self.clone(),
            url,
            port,
        })
    }

    /// The addresses of `name`, every one of them allowed on `port`.
    async fn resolve(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, EndpointError> {
        let name = normalize(name);
        let unresolvable = |detail: String| EndpointError::Unresolvable {
            host: name.clone(),
            detail,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| unresolvable(e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(unresolvable("no address".into()));
        }
        let trusted = self.allowed.iter().any(|allowed| {
            matches!(allowed, Allowed::Name { name: n, port: p }
                if *n == name && p.is_none_or(|p| p == port))
        });
        if !trusted {
            // One refused address is enough: the connection may pick any of them.
            for addr in &addrs {
                self.check_address(&name, addr.ip(), port)?;
            }
        }
        Ok(addrs)
    }

    /// Whether `address` (which `host` names) may be contacted on `port`.
    pub(super) fn check_address(
        &self,
        host: &str,
        address: IpAddr,
        port: u16,
    ) -> Result<(), EndpointError> {
        let address = address.to_canonical();
        let Some(kind) = non_public(address) else {
            return Ok(());
        };
        let allowed = self.allowed.iter().any(|allowed| {
            matches!(allowed, Allowed::Addresses { net, port: p }
                if net.contains(&address) && p.is_none_or(|p| p == port))
        });
        if allowed {
            return Ok(());
        }
        Err(EndpointError::Refused {
            host: host.to_owned(),
            address,
            kind,
        })
    }
}

/// An endpoint the guard let through. Only [`EndpointGuard::check`] makes one, and the only
/// client it gives connects where the guard allows.
#[derive(Debug, Clone)]
pub struct CheckedEndpoint {
    guard: EndpointGuard,
    url: Url,
    port: u16,
}

impl CheckedEndpoint {
    pub(super) fn url(&self) -> &Url {
        &self.url
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    pub(super) fn guard(&self) -> &EndpointGuard {
        &self.guard
    }

    /// An HTTP client that checks every address it resolves when it connects and follows no
    /// redirect (which could name any address, and is not resolved through the check). No
    /// proxy either: a proxy resolves names itself. Names only: the caller checks IP literals,
    /// which the client connects to without resolving.
    pub(super) fn client(&self) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Resolver {
                guard: self.guard.clone(),
                port: self.port,
            }))
            .build()
    }
}

/// Name resolution for [`CheckedEndpoint::client`]: the guard applied to every answer.
struct Resolver {
    guard: EndpointGuard,
    port: u16,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (guard, port) = (self.guard.clone(), self.port);
        Box::pin(async move {
            let addrs = guard.resolve(name.as_str(), port).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// What kind of non-public address `ip` is (IPv4-mapped IPv6 already made IPv4), if it is one.
fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => non_public_v4(ip),
        IpAddr::V6(ip) => non_public_v6(ip),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let kind = if a == 0 {
        // 0.0.0.0/8 ("this network"): connecting to it reaches the local host.
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if a == 100 && b & 0xc0 == 64 {
        "shared, carrier-grade NAT"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_documentation() {
        "documentation"
    } else if a == 192 && b == 0 && c == 0 {
        "IETF protocol assignment"
    } else if a == 198 && b & 0xfe == 18 {
        "benchmarking"
    } else if a >= 240 {
        "reserved"
    } else {
        return None;
    };
    Some(kind)
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    let kind = if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_unicast_link_local() {
        "link-local"
    } else if ip.is_unique_local() {
        "unique local"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local"
    } else if s[..6] == [0; 6] {
        "IPv4-compatible"
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 and 6to4 reach the IPv4 address they embed.
        return non_public_v4(embedded(s[6], s[7]));
    } else if s[0] == 0x2002 {
        return non_public_v4(embedded(s[1], s[2]));
    } else if s[0] == 0x2001 && s[1] == 0xdb8 {
        "documentation"
    } else if s[0] == 0x2001 && s[1] < 0x200 {
        // IETF protocol assignments, Teredo among them.
        "IETF protocol assignment"
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        "local-use NAT64"
    } else if s[..4] == [0x100, 0, 0, 0] {
        "discard-only"
    } else {
        return None;
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ip: &str) -> Option<&'static str> {
        non_public(ip.parse::<IpAddr>().unwrap().to_canonical())
    }

    #[test]
    fn internal_addresses_are_named_and_public_ones_pass() {
        for (ip, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared, carrier-grade NAT"),
            ("100.100.100.200", "shared, carrier-grade NAT"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("240.0.0.1", "reserved"),
            ("192.0.0.170", "IETF protocol assignment"),
            ("198.18.0.1", "benchmarking"),
            ("192.0.2.1", "documentation"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.1.2.3", "private"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "unique local"),
            ("fc00::1", "unique local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("2002:7f00:1::", "loopback"),
            ("2001:db8::1", "documentation"),
            ("2001::1", "IETF protocol assignment"),
            ("100::1", "discard-only"),
        ] {
            assert_eq!(kind(ip), Some(expected), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "52.216.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
            "64:ff9b::808:808",
            "2002:808:808::",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(kind(ip), None, "{ip}");
        }
    }

    #[test]
    fn allowed_hosts_parse_and_bad_entries_are_named() {
        let guard = EndpointGuard::parse(
            " minio.internal, Store.Local.:9000 ,10.0.0.0/8,127.0.0.1:9000,[::1]:9001,fd00::1,",
        )
        .unwrap();
        assert_eq!(
            *guard.allowed,
            [
                Allowed::Name {
                    name: "minio.internal".into(),
                    port: None
                },
                Allowed::Name {
                    name: "store.local".into(),
                    port: Some(9000)
                },
                Allowed::Addresses {
                    net: "10.0.0.0/8".parse().unwrap(),
                    port: None
                },
                Allowed::Addresses {
                    net: "127.0.0.1/32".parse().unwrap(),
                    port: Some(9000)
                },
                Allowed::Addresses {
                    net: "::1/128".parse().unwrap(),
                    port: Some(9001)
                },
                Allowed::Addresses {
                    net: "fd00::1/128".parse().unwrap(),
                    port: None
                },
            ]
        );
        assert!(EndpointGuard::parse("").unwrap().allowed.is_empty());
        for bad in [
            "http://x",
            "host:port",
            "a b",
            "10.0.0.0/33",
            "x:99999",
            "a..b",
        ] {
            let err = EndpointGuard::parse(bad).unwrap_err();
            assert!(err.contains("OBJECT_STORAGE_ALLOWED_HOSTS"), "{err}");
        }
    }

    #[test]
    fn addresses_pass_when_public_or_listed_on_their_port() {
        let guard = EndpointGuard::parse("10.0.0.0/8,127.0.0.1:9000").unwrap();
        assert!(guard
            .check_address("h", "8.8.8.8".parse().unwrap(), 1)
            .is_ok());
        assert!(guard
            .check_address("h", "10.9.8.7".parse().unwrap(), 1)
            .is_ok());
        assert!(guard
            .check_address("h", "::ffff:10.9.8.7".parse().unwrap(), 1)
            .is_ok());
        assert!(guard
            .check_address("h", "127.0.0.1".parse().unwrap(), 9000)
            .is_ok());
        let err = guard
            .check_address("h", "127.0.0.1".parse().unwrap(), 9001)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "h resolves to 127.0.0.1, which is not a public address (loopback): a workspace's \
             object storage may use it only if the instance allows it in \
             OBJECT_STORAGE_ALLOWED_HOSTS"
        );
        let err = guard
            .check_address("169.254.169.254", "169.254.169.254".parse().unwrap(), 80)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("169.254.169.254 is not a public address (link-local)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn endpoints_are_checked_on_what_they_resolve_to() {
        let none = EndpointGuard::default();
        for endpoint in [
            "http://169.254.169.254",
            "http://127.0.0.1:9000",
            "http://[::1]:9000/",
            "http://[::ffff:7f00:1]:9000",
            "http://localhost:9000",
            "http://LOCALHOST.:9000",
        ] {
            let err = none.check(endpoint).await.unwrap_err();
            assert!(
                matches!(err, EndpointError::Refused { .. }),
                "{endpoint}: {err}"
            );
        }
        for endpoint in ["ftp://host", "not a url", "http://"] {
            let err = none.check(endpoint).await.unwrap_err();
            assert!(
                matches!(err, EndpointError::Invalid(_)),
                "{endpoint}: {err}"
            );
        }
        let err = none.check("http://no-such-host.invalid").await.unwrap_err();
        assert!(matches!(err, EndpointError::Unresolvable { .. }), "{err}");
        // A public literal needs no lookup.
        let checked = none.check("https://8.8.8.8").await.unwrap();
        assert_eq!(checked.port(), 443);

        let by_name = EndpointGuard::parse("localhost:9000").unwrap();
        assert!(by_name.check("http://localhost:9000").await.is_ok());
        assert!(by_name.check("http://localhost:9001").await.is_err());
        assert!(by_name.check("http://127.0.0.1:9000").await.is_err());
        let by_address = EndpointGuard::parse("127.0.0.1,::1").unwrap();
        assert!(by_address.check("http://127.0.0.1:1234").await.is_ok());
        assert!(by_address.check("http://[::1]:1234").await.is_ok());
    }

    #[tokio::test]
    async fn the_client_resolver_refuses_what_the_check_refuses() {
        let resolver = Resolver {
            guard: EndpointGuard::default(),
            port: 80,
        };
        let name: Name = "localhost".parse().unwrap();
        let err = resolver.resolve(name).await.err().unwrap();
        let refused = err.downcast_ref::<EndpointError>().unwrap();
        assert!(
            matches!(refused, EndpointError::Refused { .. }),
            "{refused}"
        );
    }
}
