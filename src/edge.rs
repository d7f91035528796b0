//! What every transport reads from a request the same way: the client's address (and the
//! trusted-proxy rule behind it), the bearer, the session cookie, the CSRF header and the
//! cross-site check, and the JSON error body. REST, gRPC and the console import this module;
//! none of them imports another, and this module imports none of them.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, HeaderName, header};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::service::{RequestMeta, SESSION_COOKIE};

/// The client's address as the rest of the application sees it: set on every request by the
/// accept loop to the socket peer, and replaced by the REST/gRPC dispatch when the peer is a
/// trusted proxy that names another client ([`client_ip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client address: the socket peer, unless the peer is a trusted proxy, in which case the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy. A malformed entry
/// stops the walk at the last address that was believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Right to left over every X-Forwarded-For line, without collecting them. A line that is
    // not text is malformed like any other entry: the walk stops there.
    let mut believed = peer;
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(line) = line.to_str() else {
            return believed;
        };
        for hop in line.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if is_trusted(&ip) => believed = ip,
                Ok(ip) => return ip,
                Err(_) => return believed,
            }
        }
    }
    believed
}

/// The client of a request that a proxy asks about on its behalf (Envoy's ext_authz check, where
/// the caller is Envoy and the request it checks names its own peer and headers): the caller's
/// address ([`ClientIp`] of the check itself) unless the caller is a trusted proxy; then the
/// client the proxy reports, by [`client_ip`] with the proxy's peer (`reported_peer`) as the
/// socket peer and the checked request's `headers` (its `X-Forwarded-For`). A caller that is not
/// trusted cannot choose whose failure limit its checks count against.
pub fn reported_client_ip(
    caller: IpAddr,
    reported_peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> IpAddr {
    match reported_peer {
        Some(peer) if trusted.iter().any(|n| n.contains(&caller)) => {
            client_ip(peer, headers, trusted)
        }
        _ => caller,
    }
}

/// The client's address of a request: the one the accept loop set ([`ClientIp`]), else the
/// socket peer.
pub fn client_addr(extensions: &Extensions) -> Option<IpAddr> {
    extensions.get::<ClientIp>().map(|c| c.0).or_else(|| {
        extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    })
}

/// The client's address and user agent, for audit and the per-address limits.
pub fn request_meta(headers: &HeaderMap, extensions: &Extensions) -> RequestMeta {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    RequestMeta::new(client_addr(extensions), ua)
}

/// The bearer token of the `Authorization` header, if the header is well-formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    // The scheme is whatever comes before the first space; `Bearer ` (any case) is the common
    // case, checked on the bytes first.
    let token = match value.as_bytes().get(..7) {
        Some(head) if head.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => {
            let (scheme, token) = value.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            token
        }
    };
    Some(token.trim())
}

/// The value of the session cookie, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value)
        })
}

/// Whether the browser says the request comes from another site: `Sec-Fetch-Site` other than
/// `same-origin` / `none`, or an `Origin` that is not this server's (`Host`). A request with the
/// session cookie from another site is refused whatever it carries.
pub fn cross_site(headers: &HeaderMap) -> bool {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return true;
    }
    match (get("origin"), get("host")) {
        (None, _) => false,
        (Some(origin), Some(host)) => {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            rest != Some(host)
        }
        (Some(_), None) => true,
    }
}

/// Sets (or, with `max_age` 0 and an empty value, clears) the session cookie on a response:
/// `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` unless the server runs on plain HTTP.
/// The response is marked `no-store` too. Shared by the REST sign-in and the console's.
pub fn set_session_cookie(
    res: &mut axum::response::Response,
    value: &str,
    max_age: u64,
    secure: bool,
) {
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
}

/// The header a session request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid_argument`, `unauthenticated`, `invalid_credentials`, `permission_denied`,
    /// `not_found`, `already_exists`, `failed_precondition`, `payload_too_large`,
    /// `rate_limited` or `internal`.
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers(&[]), &[]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_checking_proxy_is_believed_about_its_peer_only_when_it_is_trusted() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let envoy = ip("127.0.0.1");
        let stranger = ip("203.0.113.9");
        // Envoy reports its peer: the client, or a trusted load balancer with X-Forwarded-For.
        assert_eq!(
            reported_client_ip(envoy, Some(ip("198.51.100.7")), &headers(&[]), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            reported_client_ip(
                envoy,
                Some(ip("10.1.2.3")),
                &headers(&["6.6.6.6, 198.51.100.8"]),
                &trusted
            ),
            ip("198.51.100.8")
        );
        // An untrusted peer's own X-Forwarded-For is not believed.
        assert_eq!(
            reported_client_ip(
                envoy,
                Some(ip("198.51.100.7")),
                &headers(&["6.6.6.6"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // No peer reported (a Unix socket): the caller.
        assert_eq!(
            reported_client_ip(envoy, None, &headers(&[]), &trusted),
            envoy
        );
        // A caller that is not trusted is its own client, whatever it reports.
        assert_eq!(
            reported_client_ip(
                stranger,
                Some(ip("198.51.100.7")),
                &headers(&["1.2.3.4"]),
                &trusted
            ),
            stranger
        );
        assert_eq!(
            reported_client_ip(envoy, Some(ip("198.51.100.7")), &headers(&[]), &[]),
            envoy
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        // spoofed, real client, inner proxy; then the peer is the outer proxy.
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("198.51.100.7"));
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers(&[]), &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers(&["10.9.9.9"]), &trusted),
            ip("10.9.9.9")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers(&["garbage, 10.1.1.1"]), &trusted),
            ip("10.1.1.1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers(&["2001:db8::1"]), &trusted),
            ip("2001:db8::1")
        );
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of what is read from request headers: the client-IP rule above all.
    //! PROPTEST_CASES cases each (256 by default).

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use axum::http::{HeaderMap, HeaderValue};
    use ipnet::IpNet;
    use proptest::prelude::*;

    use super::*;

    fn trusted() -> Vec<IpNet> {
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]
    }

    /// Addresses from a small pool (so header entries repeat and hit the trusted ranges) and
    /// from everywhere.
    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u8..4).prop_map(|n| IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))),
            Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            (0u8..4).prop_map(|n| IpAddr::V4(Ipv4Addr::new(203, 0, 113, n))),
            any::<u16>().prop_map(|n| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n))),
            any::<u16>().prop_map(|n| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n))),
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        ]
    }

    /// One `X-Forwarded-For` entry: an address (maybe padded or in brackets), or garbage.
    fn entry() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => any_ip().prop_map(|ip| ip.to_string()),
            1 => any_ip().prop_map(|ip| format!("  {ip}\t")),
            1 => any_ip().prop_map(|ip| format!("[{ip}]")),
            1 => any_ip().prop_map(|ip| format!("{ip}:443")),
            1 => "[ -~]{0,12}",
            1 => Just(String::new()),
            1 => Just("unknown".to_string()),
        ]
    }

    /// Header lines made of entries, or of arbitrary bytes a header value may hold (visible
    /// ASCII, tab and obs-text; the latter is not UTF-8 and cannot be read as text).
    fn xff_lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let line = prop_oneof![
            4 => prop::collection::vec(entry(), 0..5).prop_map(|es| es.join(",").into_bytes()),
            1 => prop::collection::vec(
                prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff],
                0..40
            ),
        ];
        prop::collection::vec(line, 0..4)
    }

    fn header_map(lines: &[Vec<u8>]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", HeaderValue::from_bytes(l).unwrap());
        }
        h
    }

    /// The entries of the header lines, right-most first, trimmed; a line that is not text
    /// stands as one malformed entry, which ends the walk like any other.
    fn readable_entries_right_to_left(h: &HeaderMap) -> Vec<String> {
        let mut entries = Vec::new();
        for line in h.get_all("x-forwarded-for").iter().rev() {
            match line.to_str() {
                Ok(l) => entries.extend(l.rsplit(',').map(|e| e.trim().to_string())),
                Err(_) => entries.push("(not text)".to_string()),
            }
        }
        entries
    }

    fn trusted_ip() -> impl Strategy<Value = IpAddr> {
        any_ip().prop_map(|ip| match ip {
            IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::new(10, v4.octets()[1], 0, v4.octets()[3])),
            IpAddr::V6(v6) => {
                let mut s = v6.segments();
                s[0] = 0xfd00 | (s[0] & 0xff);
                IpAddr::V6(Ipv6Addr::from(s))
            }
        })
    }

    fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
        any_ip().prop_map(|ip| {
            if trusted().iter().any(|n| n.contains(&ip)) {
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))
            } else {
                ip
            }
        })
    }

    proptest! {
        #[test]
        fn an_untrusted_peer_is_always_the_client(peer in untrusted_ip(), lines in xff_lines()) {
            let t = trusted();
            prop_assert_eq!(client_ip(peer, &header_map(&lines), &t), peer);
            prop_assert_eq!(client_ip(peer, &header_map(&lines), &[]), peer);
        }

        /// Behind a trusted peer the answer is the peer or an address of the header, reached by
        /// walking from the right over trusted addresses only: never past an untrusted or
        /// malformed entry, and it is the first untrusted one when the walk meets one.
        #[test]
        fn behind_a_trusted_peer_the_walk_crosses_only_trusted_entries(peer in trusted_ip(), lines in xff_lines()) {
            let t = trusted();
            let is_trusted = |ip: &IpAddr| t.iter().any(|n| n.contains(ip));
            prop_assert!(is_trusted(&peer));
            let h = header_map(&lines);
            let got = client_ip(peer, &h, &t);
            let entries = readable_entries_right_to_left(&h);
            // The reference walk.
            let mut want = peer;
            for e in &entries {
                match e.parse::<IpAddr>() {
                    Ok(ip) if is_trusted(&ip) => want = ip,
                    Ok(ip) => {
                        want = ip;
                        break;
                    }
                    Err(_) => break,
                }
            }
            prop_assert_eq!(got, want);
            prop_assert!(got == peer || entries.iter().any(|e| e.parse::<IpAddr>() == Ok(got)));
        }

        #[test]
        fn no_header_means_the_peer(peer in any_ip()) {
            prop_assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted()), peer);
        }

        #[test]
        fn arbitrary_header_bytes_never_panic_the_header_readers(
            name in prop_oneof![
                Just("authorization"), Just("cookie"), Just("origin"), Just("host"),
                Just("sec-fetch-site"), Just("x-forwarded-for"),
            ],
            values in prop::collection::vec(
                prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..60),
                0..3,
            ),
            peer in any_ip(),
        ) {
            let mut h = HeaderMap::new();
            for v in &values {
                h.append(name, HeaderValue::from_bytes(v).unwrap());
            }
            let _ = bearer(&h);
            let _ = session_cookie(&h);
            let _ = cross_site(&h);
            let got = client_ip(peer, &h, &trusted());
            prop_assert!(got == peer || name == "x-forwarded-for");
        }

        #[test]
        fn a_bearer_header_gives_back_its_token(scheme in "[bB][eE][aA][rR][eE][rR]", token in "[!-~]{1,80}") {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, format!("{scheme} {token}").parse().unwrap());
            prop_assert_eq!(bearer(&h), Some(token.as_str()));
        }
    }
}
