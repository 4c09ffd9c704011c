//! Where webhooks may go: `webhooks.deny_private_networks` (checked on IP hosts before an
//! attempt and on the addresses a name resolves to, at connect time) and
//! `webhooks.allowed_hosts`; and transport errors as text without the URL. Plain values in and
//! out, so the configuration can check its targets with the same rules at load.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Addresses `webhooks.deny_private_networks` refuses: loopback, private (RFC 1918), CGNAT,
/// link-local (cloud metadata at 169.254.169.254 among them), unique-local IPv6, unspecified,
/// multicast, broadcast and reserved ones, and IPv6 forms that embed such an IPv4 address.
pub(crate) fn is_private_destination(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => private_v4(a),
        IpAddr::V6(a) => private_v6(a),
    }
}

fn private_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    o0 == 0 // "this network", 0.0.0.0 included
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || (o0 == 100 && (o1 & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
        || (o0 == 192 && o1 == 0 && o2 == 0) // 192.0.0.0/24, protocol assignments
        || (o0 == 198 && (o1 & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || a.is_multicast()
        || o0 >= 240 // reserved, broadcast included
}

fn private_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let s = a.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, old site-local
        || (s[..6] == [0; 6] && private_v4(embedded(s[6], s[7]))) // ::a.b.c.d
        || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && private_v4(embedded(s[6], s[7]))) // NAT64
        || (s[0] == 0x2002 && private_v4(embedded(s[1], s[2]))) // 6to4
}

/// Why `url` may not be sent to under `webhooks.allowed_hosts` and, for a host written as an
/// IP address, `webhooks.deny_private_networks`; `None` when it may. Host names are checked
/// against the deny rule where they are resolved, at connect time ([`GuardedResolver`]).
pub(crate) fn refusal(
    deny_private_networks: bool,
    allowed_hosts: &[String],
    url: &str,
) -> Option<String> {
    if !deny_private_networks && allowed_hosts.is_empty() {
        return None;
    }
    let Ok(u) = reqwest::Url::parse(url) else {
        return Some("the URL does not parse".into());
    };
    // The parser writes hosts in one form: names in lower case, IPv4 dotted (also when the
    // URL said `2130706433` or `0x7f.1`), IPv6 in brackets.
    let Some(host) = u.host_str() else {
        return Some("the URL has no host".into());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !allowed_hosts.is_empty() {
        let listed = allowed_hosts.iter().any(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(host)
        });
        if !listed {
            return Some(format!("host {host} is not in webhooks.allowed_hosts"));
        }
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if deny_private_networks && is_private_destination(ip) => Some(format!(
            "{ip} is a private, loopback or link-local address (webhooks.deny_private_networks)"
        )),
        _ => None,
    }
}

/// Resolves webhook host names and keeps only the addresses `webhooks.deny_private_networks`
/// allows, so that the rule holds for the address actually connected to (a name that
/// resolves, or is re-pointed, to a private address is refused, DNS rebinding included).
#[derive(Debug)]
pub(super) struct GuardedResolver;

/// A destination refused by the rules; final, not retried.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !is_private_destination(a.ip()))
                .collect();
            if allowed.is_empty() && !all.is_empty() {
                let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(Box::new(Refused(format!(
                    "{host} resolves only to private, loopback or link-local addresses ({}) (webhooks.deny_private_networks)",
                    shown.join(", ")
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The refusal somewhere in `e`'s causes, if any.
pub(super) fn refused_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(r) = x.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        cur = x.source();
    }
    None
}

/// A transport error as text with its causes, without the URL (it may hold a password).
pub(super) fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_destinations() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(is_private_destination(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private_destination(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn refusal_follows_the_lists() {
        assert_eq!(
            refusal(false, &[], "http://169.254.169.254/latest"),
            None,
            "off by default"
        );
        for url in [
            "http://127.0.0.1:9/hook",
            "http://u:pw@169.254.169.254/x",
            "http://2130706433/", // 127.0.0.1 written as a number
            "http://0x7f.1/",
            "http://[::ffff:10.0.0.1]:80/",
            "http://[fe80::1]/",
        ] {
            let why = refusal(true, &[], url).unwrap_or_default();
            assert!(why.contains("deny_private_networks"), "{url}: {why}");
        }
        assert_eq!(
            refusal(true, &[], "https://hooks.example.com/in"),
            None,
            "names: at connect"
        );
        assert_eq!(refusal(true, &[], "http://8.8.8.8/"), None);
        let listed = ["Hooks.Example.com".to_owned(), "[::1]".to_owned()];
        assert_eq!(
            refusal(false, &listed, "https://hooks.example.COM:8443/in"),
            None
        );
        assert_eq!(refusal(false, &listed, "http://[::1]:9/"), None);
        let why = refusal(false, &listed, "https://evil.example/in").unwrap();
        assert!(why.contains("allowed_hosts"), "{why}");
        assert!(
            refusal(false, &listed, "https://sub.hooks.example.com/").is_some(),
            "exact names"
        );
    }
}
