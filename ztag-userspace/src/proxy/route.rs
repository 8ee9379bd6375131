//! Routing: the first route (in config order) whose host, path prefix and
//! method all match the normalised request wins.
//!
//! * host: exact (case-insensitive, port ignored), or `*.example.com`
//!   matching exactly one label (`a.example.com`, not `example.com` nor
//!   `a.b.example.com`); no hosts means any host.
//! * path prefix: segment-aware. `/api` matches `/api`, `/api/` and
//!   `/api/x`, not `/apix`; a prefix ending in `/` matches what starts with it.
//! * methods: any of the listed; none listed means any.

use http::Method;

use super::config::RouteConfig;

/// Whether `host` (lower case, no port) matches a route's pattern.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == host,
    }
}

/// Whether a normalised path falls under `prefix`.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" || prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Lower-cases the host and drops a port (`Example.COM:8443` → `example.com`;
/// `[::1]:8443` → `[::1]`).
pub fn host_only(authority: &str) -> String {
    let h = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    h.to_ascii_lowercase()
}

/// Finds the route for a request; `None` is 404.
pub fn find<'a>(
    routes: &'a [RouteConfig],
    host: &str,
    path: &str,
    method: &Method,
) -> Option<(usize, &'a RouteConfig)> {
    routes.iter().enumerate().find(|(_, r)| {
        (r.hosts.is_empty() || r.hosts.iter().any(|p| host_matches(p, host)))
            && path_matches(&r.path_prefix, path)
            && (r.methods.is_empty() || r.methods.contains(method))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], prefix: &str, methods: &[Method]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefix: prefix.into(),
            methods: methods.to_vec(),
            upstream: 0,
            authenticate: vec![],
            public: true,
            require_scopes: vec![],
            require_claims: vec![],
            path_pattern: None,
            authz: vec![],
            inspect: None,
            filter: None,
            mcp: None,
            credential: None,
            approval: None,
            rate_limit: Default::default(),
        }
    }

    #[test]
    fn first_match_in_config_order_by_host_prefix_and_method() {
        let routes = vec![
            route(
                "read",
                &["api.example.com"],
                "/v1",
                &[Method::GET, Method::HEAD],
            ),
            route("wild", &["*.example.com"], "/v1/", &[]),
            route("any", &[], "/", &[]),
        ];
        let name =
            |h: &str, p: &str, m: Method| find(&routes, h, p, &m).map(|(_, r)| r.name.as_str());
        assert_eq!(name("api.example.com", "/v1/x", Method::GET), Some("read"));
        assert_eq!(name("api.example.com", "/v1", Method::GET), Some("read"));
        assert_eq!(name("api.example.com", "/v1x", Method::GET), Some("any"));
        assert_eq!(name("api.example.com", "/v1/x", Method::POST), Some("wild"));
        assert_eq!(name("b.example.com", "/v1/x", Method::POST), Some("wild"));
        assert_eq!(name("a.b.example.com", "/v1/x", Method::POST), Some("any"));
        assert_eq!(name("example.com", "/v1/x", Method::POST), Some("any"));
        let only = vec![route("read", &["api.example.com"], "/v1", &[Method::GET])];
        assert!(find(&only, "evil.com", "/v1", &Method::GET).is_none());
        assert!(find(&only, "api.example.com", "/v1", &Method::DELETE).is_none());
    }

    #[test]
    fn host_only_drops_ports_and_case() {
        assert_eq!(host_only("Example.COM:8443"), "example.com");
        assert_eq!(host_only("example.com"), "example.com");
        assert_eq!(host_only("[::1]:8443"), "[::1]");
        assert_eq!(host_only("127.0.0.1:80"), "127.0.0.1");
    }
}
