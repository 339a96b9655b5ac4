//! Where the etcd cluster is and how to reach it: [`EtcdConfig`], and the
//! `etcd://` / `etcds://` URL an operator writes it as.
//!
//! Parsing is strict: a URL this module accepts is one the client can dial,
//! so a typo is reported at start-up rather than as a store that never
//! answers. Credentials are not taken from the URL (it ends up in process
//! listings and logs); they go in [`EtcdConfig::user`].

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

/// The key prefix a cluster keeps its state under when the URL names none.
pub const DEFAULT_PREFIX: &str = "/ballast/";

/// How long a store call may take before it is [`StoreError::Unavailable`].
///
/// [`StoreError::Unavailable`]: ballast_core::store::StoreError::Unavailable
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The client port etcd listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 2379;

/// How to reach one etcd cluster and which part of its key space is ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:port`, or `https://` with [`Self::tls`]).
    /// A bare `host:port` is taken as http, or https when `tls` is set.
    pub endpoints: Vec<String>,
    /// Prepended to every key; two clusters sharing one etcd need prefixes
    /// of which neither starts with the other.
    pub prefix: String,
    /// The deadline of every call (connect, read, transaction, lease and
    /// watch set-up).
    pub timeout: Duration,
    /// etcd user name and password, when etcd has authentication enabled.
    pub user: Option<(String, String)>,
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd: the CA that signed its certificate, and optionally a client
/// certificate (etcd's `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Why an etcd URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("etcd url {url:?}: scheme must be etcd:// or etcds://")]
    Scheme { url: String },
    #[error("etcd url {url:?}: no host")]
    EmptyHost { url: String },
    #[error("etcd url {url:?}: bad host {host:?}")]
    BadHost { url: String, host: String },
    #[error("etcd url {url:?}: bad port {port:?} (1-65535)")]
    BadPort { url: String, port: String },
    #[error("etcd url {url:?}: credentials do not belong in the url; set the user in the config")]
    Credentials { url: String },
    #[error("etcd url {url:?}: {detail}")]
    Query { url: String, detail: String },
}

impl EtcdConfig {
    /// A config for `endpoints` with the default prefix and deadline.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            timeout: DEFAULT_TIMEOUT,
            user: None,
            tls: None,
        }
    }

    /// Parse `etcd://h1:2379,h2:2379[/prefix/]` or, for TLS,
    /// `etcds://h1:2379,...[/prefix/]?ca=PATH[&cert=PATH&key=PATH]`.
    ///
    /// A missing port is 2379; a missing or `/` path is [`DEFAULT_PREFIX`];
    /// a prefix gets a trailing `/` if it lacks one, so `/a` and `/ab` stay
    /// apart. IPv6 hosts are written in brackets.
    pub fn parse_url(url: &str) -> Result<Self, ConfigError> {
        let err_url = || url.to_string();
        let (tls, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("etcds://") {
            (true, rest)
        } else {
            return Err(ConfigError::Scheme { url: err_url() });
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(ConfigError::Credentials { url: err_url() });
        }
        if authority.is_empty() {
            return Err(ConfigError::EmptyHost { url: err_url() });
        }
        let scheme = if tls { "https" } else { "http" };
        let endpoints = authority
            .split(',')
            .map(|hp| parse_host_port(url, hp).map(|(h, p)| format!("{scheme}://{h}:{p}")))
            .collect::<Result<Vec<_>, _>>()?;
        let prefix = match path {
            "" | "/" => DEFAULT_PREFIX.to_string(),
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        };
        let tls = parse_query(url, query, tls)?;
        Ok(Self {
            endpoints,
            prefix,
            timeout: DEFAULT_TIMEOUT,
            user: None,
            tls,
        })
    }
}

/// One `host[:port]` of the authority; the host as it goes in a URL.
fn parse_host_port(url: &str, hp: &str) -> Result<(String, u16), ConfigError> {
    let empty = || ConfigError::EmptyHost {
        url: url.to_string(),
    };
    let bad_host = |h: &str| ConfigError::BadHost {
        url: url.to_string(),
        host: h.to_string(),
    };
    let (host, port) = if let Some(v6) = hp.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(|| bad_host(hp))?;
        addr.parse::<Ipv6Addr>().map_err(|_| bad_host(addr))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad_host(hp))?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match hp.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        };
        if host.is_empty() {
            return Err(empty());
        }
        let name_ok = host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !name_ok {
            return Err(bad_host(host));
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            // parse accepts a leading '+', which no URL has.
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(ConfigError::BadPort {
                    url: url.to_string(),
                    port: p.to_string(),
                })
            }
        },
    };
    Ok((host, port))
}

/// The TLS files of an `etcds://` URL; an `etcd://` URL takes no query.
fn parse_query(url: &str, query: Option<&str>, tls: bool) -> Result<Option<EtcdTls>, ConfigError> {
    let err = |detail: String| ConfigError::Query {
        url: url.to_string(),
        detail,
    };
    if !tls {
        return match query {
            None => Ok(None),
            Some(_) => Err(err(
                "etcd:// takes no parameters (ca, cert and key are for etcds://)".into(),
            )),
        };
    }
    let (mut ca, mut cert, mut key) = (None, None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| err(format!("parameter {pair:?} has no value")))?;
        if value.is_empty() {
            return Err(err(format!("parameter {name} is empty")));
        }
        let slot = match name {
            "ca" => &mut ca,
            "cert" => &mut cert,
            "key" => &mut key,
            other => return Err(err(format!("unknown parameter {other:?} (ca, cert, key)"))),
        };
        if slot.replace(PathBuf::from(value)).is_some() {
            return Err(err(format!("parameter {name} given twice")));
        }
    }
    let ca =
        ca.ok_or_else(|| err("etcds:// needs ?ca=PATH (the CA of etcd's certificate)".into()))?;
    if cert.is_some() != key.is_some() {
        return Err(err("cert and key go together".into()));
    }
    Ok(Some(EtcdTls { ca, cert, key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_prefix_and_defaults() {
        let c = EtcdConfig::parse_url("etcd://h1:2379,10.0.0.2:32379").unwrap();
        assert_eq!(c.endpoints, ["http://h1:2379", "http://10.0.0.2:32379"]);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.tls, None);

        let c = EtcdConfig::parse_url("etcd://etcd.example.com/prod/ballast").unwrap();
        assert_eq!(c.endpoints, ["http://etcd.example.com:2379"]);
        assert_eq!(c.prefix, "/prod/ballast/");
        assert_eq!(
            EtcdConfig::parse_url("etcd://h/").unwrap().prefix,
            DEFAULT_PREFIX
        );

        let c = EtcdConfig::parse_url("etcd://[::1]:2379,[fe80::1]").unwrap();
        assert_eq!(c.endpoints, ["http://[::1]:2379", "http://[fe80::1]:2379"]);
    }

    #[test]
    fn etcds_means_tls() {
        let c = EtcdConfig::parse_url("etcds://h:2379?ca=/ca.pem&cert=/c.pem&key=/k.pem").unwrap();
        assert_eq!(c.endpoints, ["https://h:2379"]);
        assert_eq!(
            c.tls,
            Some(EtcdTls {
                ca: "/ca.pem".into(),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            })
        );
        let c = EtcdConfig::parse_url("etcds://h/x/?ca=/ca.pem").unwrap();
        assert_eq!(c.prefix, "/x/");
        assert_eq!(c.tls.unwrap().cert, None);
        for bad in [
            "etcds://h",
            "etcds://h?cert=/c.pem&key=/k.pem",
            "etcds://h?ca=/a&cert=/c.pem",
            "etcds://h?ca=/a&ca=/b",
            "etcds://h?ca=",
            "etcds://h?ca",
            "etcds://h?ca=/a&verify=no",
            "etcd://h?ca=/a",
        ] {
            assert!(
                matches!(EtcdConfig::parse_url(bad), Err(ConfigError::Query { .. })),
                "{bad}: {:?}",
                EtcdConfig::parse_url(bad)
            );
        }
    }

    #[test]
    fn refuses_other_schemes() {
        for bad in [
            "http://h:2379",
            "https://h:2379",
            "ETCD://h",
            "etcd:/h",
            "etcd:h",
            "h:2379",
            "",
            " etcd://h",
        ] {
            let e = EtcdConfig::parse_url(bad).unwrap_err();
            assert!(matches!(e, ConfigError::Scheme { .. }), "{bad}: {e}");
        }
        let e = EtcdConfig::parse_url("http://h:2379").unwrap_err();
        assert_eq!(
            e.to_string(),
            "etcd url \"http://h:2379\": scheme must be etcd:// or etcds://"
        );
    }

    #[test]
    fn refuses_empty_hosts() {
        for bad in [
            "etcd://",
            "etcd:///prefix",
            "etcd://:2379",
            "etcd://h1,,h2",
            "etcd://h1,",
            "etcd://,h1",
        ] {
            let e = EtcdConfig::parse_url(bad).unwrap_err();
            assert!(matches!(e, ConfigError::EmptyHost { .. }), "{bad}: {e}");
        }
        for bad in [
            "etcd://h_1",
            "etcd://h..x",
            "etcd://h 1",
            "etcd://[::g]:2379",
            "etcd://[::1",
            "etcd://[::1]2379",
        ] {
            let e = EtcdConfig::parse_url(bad).unwrap_err();
            assert!(matches!(e, ConfigError::BadHost { .. }), "{bad}: {e}");
        }
        let e = EtcdConfig::parse_url("etcd://root:pw@h:2379").unwrap_err();
        assert!(matches!(e, ConfigError::Credentials { .. }), "{e}");
    }

    #[test]
    fn refuses_bad_ports() {
        for bad in [
            "etcd://h:",
            "etcd://h:0",
            "etcd://h:65536",
            "etcd://h:99999",
            "etcd://h:-1",
            "etcd://h:+80",
            "etcd://h:2379x",
            "etcd://h:2379:1",
            "etcd://h1:2379,h2:abc",
            "etcd://[::1]:",
        ] {
            let e = EtcdConfig::parse_url(bad).unwrap_err();
            assert!(matches!(e, ConfigError::BadPort { .. }), "{bad}: {e}");
        }
        let e = EtcdConfig::parse_url("etcd://h:65536").unwrap_err();
        assert_eq!(
            e.to_string(),
            "etcd url \"etcd://h:65536\": bad port \"65536\" (1-65535)"
        );
        assert_eq!(
            EtcdConfig::parse_url("etcd://h:65535").unwrap().endpoints,
            ["http://h:65535"]
        );
    }
}
