//! Secrets kept out of what Herald prints and logs: passwords in URLs, credentials in query
//! strings, header values.

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Query parameters whose values are treated as secrets (matched as substrings, any case).
const SECRET_PARAMS: &[&str] = &[
    "pass",
    "secret",
    "token",
    "key",
    "auth",
    "sig",
    "credential",
];

/// The URL with its password and any secret-looking query values replaced, for messages and
/// logs. The user name and host stay, so the operator can still tell which URL it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}:***@{host}")
        }
        _ => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redact_query(tail))
}

/// A comma-separated list of URLs (`redis.url` with Sentinels or cluster seeds), each redacted.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let lead = &u[..u.len() - u.trim_start().len()];
            format!("{lead}{}", redact_url(u.trim_start()))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret(name) => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{path}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_and_secret_query_values_only() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://herald.db"), "sqlite://herald.db");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=pw&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("https://u:pw@hooks.example/in?token=t&x=1#f"),
            "https://u:***@hooks.example/in?token=***&x=1#f"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_urls("redis://:a@h1:26379, rediss://u:b@h2:26379/0,redis://h3"),
            "redis://:***@h1:26379, rediss://u:***@h2:26379/0,redis://h3"
        );
    }
}
