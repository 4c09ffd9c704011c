//! `herald trigger` and `herald channels`: signed HTTP API clients for quick checks against a
//! running server, using the credentials of the configuration.

use crate::config::Config;
use herald_core::App;
use herald_protocol::sign;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which server and app to talk to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Base URL of the server (default: from the config's host and port, http or https).
    #[arg(long)]
    pub url: Option<String>,
    /// App id (default: the first app of the configuration).
    #[arg(long)]
    pub app_id: Option<String>,
    /// Accept any TLS certificate (for self-signed test setups only).
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// Channel to publish to.
    pub channel: String,
    /// Event name.
    pub event: String,
    /// Event data, sent verbatim (usually JSON).
    pub data: String,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct ChannelsArgs {
    /// Only channels whose name starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Info attributes, e.g. `subscription_count` or `user_count` (presence prefix only).
    #[arg(long)]
    pub info: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

fn pick(config: &Config, target: &Target) -> Result<(String, App), String> {
    let app = match &target.app_id {
        Some(id) => config.apps.iter().find(|a| &a.id == id).ok_or_else(|| {
            format!("no app with id `{id}` in the configuration; check --app-id or --config")
        })?,
        None => config
            .apps
            .first()
            .ok_or("the configuration lists no apps")?,
    };
    let url = target.url.clone().unwrap_or_else(|| {
        let host = match config.server.host.as_str() {
            "0.0.0.0" | "::" => "127.0.0.1",
            h => h,
        };
        let scheme = if config.tls.enabled() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}:{}", config.server.port)
    });
    Ok((url.trim_end_matches('/').to_owned(), app.clone()))
}

/// Builds the signed query string for a request.
pub fn signed_query(
    app: &App,
    method: &str,
    path: &str,
    body: &[u8],
    extra: &[(String, String)],
    now: i64,
) -> String {
    let mut pairs: Vec<(String, String)> = vec![
        ("auth_key".into(), app.key.clone()),
        ("auth_timestamp".into(), now.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        pairs.push(("body_md5".into(), sign::md5_hex(body)));
    }
    pairs.extend(extra.iter().cloned());
    let sig = sign::sign_request(&app.secret, method, path, &pairs);
    pairs.push(("auth_signature".into(), sig));
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn send(
    target: &Target,
    method: reqwest::Method,
    base: &str,
    path_and_query: String,
    body: Vec<u8>,
) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(target.insecure)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let resp = client
        .request(method, format!("{base}{path_and_query}"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| unreachable(base, &e))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("the server answered {status}: {}", text.trim_end()))
    }
}

/// One line for a request that got no answer: the server it tried (not the signed URL, which
/// is long and says nothing more), the innermost cause, and what to do.
fn unreachable(base: &str, e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let why = if e.is_timeout() {
        "no answer in time".to_owned()
    } else {
        cause.to_string()
    };
    format!(
        "no answer from {base} ({why}); is the server running there? set --url, or --host/--port/--config as the server has them (start one with `herald`); --insecure for a self-signed certificate"
    )
}

/// `herald trigger <channel> <event> <data>`.
pub async fn trigger(config: &Config, args: TriggerArgs) -> Result<(), String> {
    let (base, app) = pick(config, &args.target)?;
    let body =
        serde_json::json!({ "name": args.event, "channels": [args.channel], "data": args.data })
            .to_string()
            .into_bytes();
    let path = format!("/apps/{}/events", app.id);
    let q = signed_query(&app, "POST", &path, &body, &[], now());
    let out = send(
        &args.target,
        reqwest::Method::POST,
        &base,
        format!("{path}?{q}"),
        body,
    )
    .await?;
    println!("{out}");
    Ok(())
}

/// `herald channels`.
pub async fn channels(config: &Config, args: ChannelsArgs) -> Result<(), String> {
    let (base, app) = pick(config, &args.target)?;
    let mut extra = Vec::new();
    if let Some(p) = args.prefix {
        extra.push(("filter_by_prefix".to_owned(), p));
    }
    if let Some(i) = args.info {
        extra.push(("info".to_owned(), i));
    }
    let path = format!("/apps/{}/channels", app.id);
    let q = signed_query(&app, "GET", &path, b"", &extra, now());
    let out = send(
        &args.target,
        reqwest::Method::GET,
        &base,
        format!("{path}?{q}"),
        Vec::new(),
    )
    .await?;
    println!("{out}");
    Ok(())
}
