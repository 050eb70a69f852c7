//! Which address a request comes from, for per-client limits: the connection's peer, or,
//! behind proxies the operator trusts (`--trusted-proxies`), the address the nearest untrusted
//! hop reported in `X-Forwarded-For`.
//!
//! The header is read right to left: each trusted proxy appends the address it received the
//! request from, so the rightmost entry that is not a trusted proxy is the first address no
//! trusted party vouches for beyond, and everything left of it may be forged by the client.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The forwarding header proxies append to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The client of a request that arrived from `peer` with `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several headers count as one comma-separated list, in order.
    let hops: Vec<Option<IpAddr>> = headers
        .get_all(FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("garbage").split(','))
        .map(|hop| parse_hop(hop.trim()))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // An entry that is no address ends the walk: nothing left of it can be trusted.
        let Some(hop) = hop else { break };
        client = *hop;
        if !is_trusted(hop) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, an IPv6 address in brackets, either with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let h = headers(&["203.0.113.7"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &[]), ip("10.0.0.5"));
    }

    #[test]
    fn an_untrusted_peer_cannot_pick_its_address() {
        let h = headers(&["203.0.113.7"]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_reported_client_counts() {
        let h = headers(&["203.0.113.7"]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &trusted), ip("203.0.113.7"));
    }

    #[test]
    fn a_forged_leftmost_entry_is_skipped() {
        // The client sent "1.2.3.4" itself; the ingress appended the address it saw.
        let h = headers(&["1.2.3.4, 203.0.113.7"]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &trusted), ip("203.0.113.7"));
    }

    #[test]
    fn chains_of_trusted_proxies_and_split_headers_are_walked() {
        let h = headers(&["203.0.113.7, 10.1.2.3", "[2001:db8::1]:443, 10.9.9.9"]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &trusted), ip("2001:db8::1"));
        let h = headers(&["203.0.113.7:5000, 10.1.2.3"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &trusted), ip("203.0.113.7"));
    }

    #[test]
    fn garbage_or_all_trusted_falls_back_to_the_nearest_known_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers(&["not-an-ip"]), &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers(&["10.0.0.9"]), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &trusted),
            ip("10.0.0.5")
        );
        // A forged garbage entry left of the real client changes nothing.
        let h = headers(&["junk, 203.0.113.7"]);
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &trusted), ip("203.0.113.7"));
    }
}
