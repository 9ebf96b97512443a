//! Endpoints name a backend and an address: `tcp://host:port`, `rdma://host:port?device=mlx5_0`,
//! `rdma-sim://host:port`. Choosing a transport is configuration, not code.

use std::fmt;
use std::str::FromStr;

use crate::error::TransportError;

/// Which backend carries the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Kernel TCP sockets.
    Tcp,
    /// RDMA verbs on a real device (or SoftRoCE), bootstrapped over TCP.
    Rdma,
    /// RDMA over the rdma-sim userspace simulator, bootstrapped over TCP.
    RdmaSim,
}

impl Scheme {
    /// The URL scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Rdma => "rdma",
            Scheme::RdmaSim => "rdma-sim",
        }
    }
}

/// A parsed endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Backend.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port; 0 asks the OS for one when binding.
    pub port: u16,
    /// Backend options from the query string, in order.
    pub params: Vec<(String, String)>,
}

impl Endpoint {
    /// A TCP endpoint.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        Self {
            scheme: Scheme::Tcp,
            host: host.into(),
            port,
            params: Vec::new(),
        }
    }

    /// `host:port` as a socket address string (IPv6 hosts in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// A query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The same endpoint with another scheme and port (e.g. the address actually bound).
    pub fn with_port(&self, port: u16) -> Self {
        Self {
            port,
            ..self.clone()
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            write!(f, "{}{}={}", if i == 0 { '?' } else { '&' }, k, v)?;
        }
        Ok(())
    }
}

impl FromStr for Endpoint {
    type Err = TransportError;

    /// Parses `scheme://host:port[?k=v&…]`; a bare `host:port` means TCP.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| TransportError::InvalidEndpoint(s.to_owned(), why.to_owned());
        let (scheme, rest) = match s.split_once("://") {
            Some(("tcp", rest)) => (Scheme::Tcp, rest),
            Some(("rdma", rest)) => (Scheme::Rdma, rest),
            Some(("rdma-sim", rest)) => (Scheme::RdmaSim, rest),
            Some((other, _)) => {
                return Err(bad(&format!(
                    "unknown scheme `{other}` (expected tcp, rdma or rdma-sim)"
                )));
            }
            None => (Scheme::Tcp, s),
        };
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            let (host, after) = stripped
                .split_once(']')
                .ok_or_else(|| bad("unterminated `[` in IPv6 host"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("missing `:port`"))?;
            (host, port)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| bad("missing `:port`"))?
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| bad("port is not a number between 0 and 65535"))?;
        let mut params = Vec::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                params.push((k.to_owned(), v.to_owned()));
            }
        }
        Ok(Endpoint {
            scheme,
            host: host.to_owned(),
            port,
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let e: Endpoint = "rdma://10.0.0.1:10912?device=mlx5_0&gid=3".parse().unwrap();
        assert_eq!(e.scheme, Scheme::Rdma);
        assert_eq!(e.host, "10.0.0.1");
        assert_eq!(e.port, 10912);
        assert_eq!(e.param("device"), Some("mlx5_0"));
        assert_eq!(e.to_string(), "rdma://10.0.0.1:10912?device=mlx5_0&gid=3");
        let e: Endpoint = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(e, Endpoint::tcp("127.0.0.1", 8080));
        let e: Endpoint = "rdma-sim://[::1]:9".parse().unwrap();
        assert_eq!(
            (e.scheme, e.host.as_str(), e.authority()),
            (Scheme::RdmaSim, "::1", "[::1]:9".to_owned())
        );
    }

    #[test]
    fn rejects_bad_input() {
        for s in [
            "udp://a:1",
            "tcp://a",
            "tcp://:1",
            "tcp://a:70000",
            "tcp://[::1:5",
        ] {
            assert!(
                matches!(
                    s.parse::<Endpoint>(),
                    Err(TransportError::InvalidEndpoint(..))
                ),
                "{s}"
            );
        }
    }
}
