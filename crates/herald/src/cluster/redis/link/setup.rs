//! Checking `[redis]` and building the clients each mode needs; nothing connects here.

use super::*;
use redis::cluster::ClusterClientBuilder;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{IntoConnectionInfo, TlsCertificates, TlsMode};

const URL_SETTING: &str = "redis.url (HERALD_REDIS_URL)";

/// The target of a link and its URLs for log lines, from settings checked together.
pub(super) fn target(
    urls: &[String],
    mode: RedisMode,
    sentinel_master: Option<&str>,
    options: &LinkOptions,
) -> Result<(Target, String), String> {
    let infos = urls
        .iter()
        .map(|u| parse_url(u.trim(), mode))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = infos.first().cloned() else {
        return Err(format!("{URL_SETTING} is empty"));
    };
    let shown = urls
        .iter()
        .map(|u| redact_url(u.trim()))
        .collect::<Vec<_>>()
        .join(",");
    let tls = is_tls(&first);
    if infos.iter().any(|i| is_tls(i) != tls) {
        return Err(format!(
            "{URL_SETTING} `{shown}` mixes redis:// and rediss://: use one for every URL"
        ));
    }
    let same_login = |i: &ConnectionInfo| {
        i.redis.username == first.redis.username
            && i.redis.password == first.redis.password
            && i.redis.db == first.redis.db
    };
    if !infos.iter().all(same_login) {
        return Err(format!(
            "{URL_SETTING} `{shown}`: every URL must carry the same user, password and database"
        ));
    }
    let certs = match &options.ca_file {
        Some(path) if !tls => {
            return Err(format!(
                "redis.ca_file (HERALD_REDIS_CA_FILE) is `{path}` but {URL_SETTING} `{shown}` does not use TLS: use rediss:// or leave redis.ca_file empty"
            ))
        }
        Some(path) => Some(read_ca_file(path)?),
        None => None,
    };
    if mode != RedisMode::Sentinel {
        for (set, setting) in [
            (
                sentinel_master.is_some(),
                "redis.sentinel_master (HERALD_REDIS_SENTINEL_MASTER)",
            ),
            (
                options.sentinel_password.is_some(),
                "redis.sentinel_password (HERALD_REDIS_SENTINEL_PASSWORD)",
            ),
        ] {
            if set {
                return Err(format!(
                    "{setting} is set but redis.mode (HERALD_REDIS_MODE) is \"{mode}\": set redis.mode = \"sentinel\" or leave it empty"
                ));
            }
        }
    }
    let target = match mode {
        RedisMode::Standalone => {
            if infos.len() > 1 {
                return Err(format!(
                    "{URL_SETTING} lists {} URLs but redis.mode (HERALD_REDIS_MODE) is \"standalone\": give one URL, or set redis.mode to \"cluster\" (seed nodes) or \"sentinel\" (the Sentinels)",
                    infos.len()
                ));
            }
            Target::Single(
                client(first, certs.as_ref()).map_err(|e| {
                    format!("invalid {URL_SETTING} `{shown}` or redis.ca_file: {e}")
                })?,
            )
        }
        RedisMode::Sentinel => {
            let Some(master) = sentinel_master.filter(|m| !m.trim().is_empty()) else {
                return Err(
                    "redis.mode (HERALD_REDIS_MODE) is \"sentinel\" but redis.sentinel_master (HERALD_REDIS_SENTINEL_MASTER) is empty: name the primary as the Sentinels know it (`sentinel monitor <name> ...`)".into(),
                );
            };
            let invalid =
                |e: RedisError| format!("invalid Sentinel settings ({URL_SETTING} `{shown}`): {e}");
            let sentinels = infos
                .iter()
                .map(|i| sentinel_info(i, options, certs.as_ref()))
                .collect::<RedisResult<Vec<_>>>()
                .map_err(invalid)?;
            Target::Sentinel {
                client: tokio::sync::Mutex::new(
                    sentinel_client(&infos, master, options, certs).map_err(invalid)?,
                ),
                sentinels,
                master: master.to_owned(),
            }
        }
        RedisMode::Cluster => {
            if first.redis.db != 0 {
                return Err(format!(
                    "{URL_SETTING} `{shown}` selects database {0}, but a Redis Cluster has only database 0: remove the /{0} from the URLs",
                    first.redis.db
                ));
            }
            let mut builder = ClusterClientBuilder::new(infos.clone())
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT)
                .retries(2)
                .min_retry_wait(50)
                .max_retry_wait(500)
                .use_protocol(ProtocolVersion::RESP2);
            if let Some(c) = &certs {
                builder = builder.certs(c.clone());
            }
            let cluster = builder
                .build()
                .map_err(|e| format!("invalid {URL_SETTING} `{shown}` for a Redis Cluster: {e}"))?;
            let template = client(first, certs.as_ref())
                .map_err(|e| format!("invalid {URL_SETTING} `{shown}`: {e}"))?
                .get_connection_info()
                .clone();
            Target::Cluster {
                client: cluster,
                template,
            }
        }
    };
    Ok((target, shown))
}

/// One URL of `redis.url`, parsed and checked.
fn parse_url(url: &str, mode: RedisMode) -> Result<ConnectionInfo, String> {
    let shown = redact_url(url);
    if url.is_empty() {
        return Err(format!(
            "{URL_SETTING} has an empty entry: list URLs separated by commas, e.g. redis://10.0.0.1:6379,redis://10.0.0.2:6379"
        ));
    }
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    let unix = matches!(scheme, "unix" | "redis+unix");
    let allowed = matches!(scheme, "redis" | "rediss") || (unix && mode == RedisMode::Standalone);
    if !allowed {
        return Err(format!(
            "{URL_SETTING} `{shown}` must start with redis:// (or rediss:// for TLS), e.g. redis://:password@10.0.0.1:6379"
        ));
    }
    let info = url.into_connection_info().map_err(|e| {
        format!("invalid {URL_SETTING} `{shown}`: {e}; e.g. redis://127.0.0.1:6379 or rediss://user:password@host:6380/0")
    })?;
    if let ConnectionAddr::TcpTls { insecure: true, .. } = info.addr {
        return Err(format!(
            "{URL_SETTING} `{shown}`: `#insecure` (TLS without checking the server's certificate) is not supported; put the certificate of the authority that signed the server's in redis.ca_file (HERALD_REDIS_CA_FILE)"
        ));
    }
    Ok(info)
}

pub(super) fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr, ConnectionAddr::TcpTls { .. })
}

/// The CA file's certificates, for rustls.
fn read_ca_file(path: &str) -> Result<TlsCertificates, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read redis.ca_file `{path}` (HERALD_REDIS_CA_FILE): {e}"))?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "redis.ca_file `{path}` (HERALD_REDIS_CA_FILE) holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    })
}

/// A client for one server; commands use RESP2 whatever the URL says, so that replies have
/// the shapes callers expect.
fn client(mut info: ConnectionInfo, certs: Option<&TlsCertificates>) -> RedisResult<Client> {
    info.redis.protocol = ProtocolVersion::RESP2;
    match certs {
        Some(c) => Client::build_with_tls(info, c.clone()),
        None => Client::open(info),
    }
}

fn sentinel_client(
    infos: &[ConnectionInfo],
    master: &str,
    options: &LinkOptions,
    certs: Option<TlsCertificates>,
) -> RedisResult<SentinelClient> {
    let first = &infos[0];
    let addrs = infos.iter().map(|i| i.addr.clone());
    let mut b = SentinelClientBuilder::new(addrs, master.to_owned(), SentinelServerType::Master)?
        .set_client_to_redis_db(first.redis.db)
        .set_client_to_redis_protocol(ProtocolVersion::RESP2);
    if let Some(user) = &first.redis.username {
        b = b.set_client_to_redis_username(user.clone());
    }
    if let Some(pw) = &first.redis.password {
        b = b.set_client_to_redis_password(pw.clone());
    }
    if let Some(pw) = &options.sentinel_password {
        b = b.set_client_to_sentinel_password(pw.clone());
    }
    if is_tls(first) {
        // The primary is reached the way the Sentinels are: with TLS, and the same roots.
        b = b
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(c) = certs {
            b = b
                .set_client_to_redis_certificates(c.clone())
                .set_client_to_sentinel_certificates(c);
        }
    }
    b.build()
}

/// How to reach one Sentinel: its address (and TLS roots) with the Sentinels' own password.
fn sentinel_info(
    url: &ConnectionInfo,
    options: &LinkOptions,
    certs: Option<&TlsCertificates>,
) -> RedisResult<ConnectionInfo> {
    let info = ConnectionInfo {
        addr: url.addr.clone(),
        redis: redis::RedisConnectionInfo {
            password: options.sentinel_password.clone(),
            ..Default::default()
        },
    };
    match certs {
        Some(c) if is_tls(url) => Ok(Client::build_with_tls(info, c.clone())?
            .get_connection_info()
            .clone()),
        _ => Ok(info),
    }
}
