//! Configuration errors as an operator needs them: the file, line and column where the file is
//! at fault, and the table or app (index and id) the error belongs to.

use super::env::humane;
use super::{
    Config, ConsoleConfig, MetricsConfig, RedisConfig, ServerConfig, StoreConfig, TlsConfig,
    WebhookSettings,
};
use herald_core::{App, WebhookTarget};
use herald_protocol::limits::Limits;
use serde::de::DeserializeOwned;
use toml::Value;

/// Line and column, both from 1 (the column in characters), of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let bytes = &text.as_bytes()[..offset.min(text.len())];
    let line_start = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let line = bytes.iter().filter(|b| **b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&bytes[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The lines of a TOML message as one line.
fn one_line(message: &str) -> String {
    message
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A file that is not TOML: `path:line:column: what the parser expected`.
pub(super) fn syntax(path: &str, text: &str, e: &toml::de::Error) -> String {
    let message = one_line(e.message());
    match e.span() {
        Some(span) => {
            let (line, column) = line_col(text, span.start);
            format!("{path}:{line}:{column}: {message}")
        }
        None => format!("{path}: {message}"),
    }
}

/// Why the merged settings `root` (file, defaults and environment) do not make a
/// configuration: the part at fault, and where the file says it when the file alone has the
/// same fault.
pub(super) fn describe(
    root: &toml::Table,
    err: toml::de::Error,
    file: Option<(&str, &str)>,
) -> String {
    let (place, setting, e) = match locate(root) {
        Some(found) => found,
        None => {
            let key = key_of(&err);
            let place = key.clone().unwrap_or_else(|| "at the top level".to_owned());
            (place, key.unwrap_or_default(), err)
        }
    };
    let message = one_line(e.message());
    let shown = humane(&message, &setting);
    // A message that names its setting already (`server.log_format `xml` must be …`) needs no
    // second name in front.
    let body = if !setting.is_empty() && shown.contains(&setting) {
        shown
    } else {
        format!("{place}: {shown}")
    };
    match file.and_then(|(path, text)| position(text, &message).map(|p| (path, p))) {
        Some((path, (line, column))) => format!("{path}:{line}:{column}: {body}"),
        None => format!("invalid configuration: {body}"),
    }
}

/// Where the file alone fails with `message`, when it does: the file is then at fault there.
fn position(text: &str, message: &str) -> Option<(usize, usize)> {
    let e = toml::from_str::<Config>(text).err()?;
    if one_line(e.message()) != message {
        return None;
    }
    Some(line_col(text, e.span()?.start))
}

/// The keys inside the value that failed, as toml reports them (`port` for `[server] port`).
/// toml keeps them private and writes them as the last line of its message (`in `port``) when
/// it has no source text to point into, which is the case for a merged value.
fn key_of(e: &toml::de::Error) -> Option<String> {
    let shown = e.to_string();
    let last = shown.trim_end().lines().last()?;
    let keys = last.strip_prefix("in `")?.strip_suffix('`')?;
    (!keys.is_empty()).then(|| keys.to_owned())
}

fn fails_as<T: DeserializeOwned>(v: &Value) -> Option<toml::de::Error> {
    v.clone().try_into::<T>().err()
}

/// The innermost part of `root` that fails on its own: a section, or an app, its limits or
/// one of its webhooks. Returns how to name it, the setting's dotted name when one key is at
/// fault, and the error.
fn locate(root: &toml::Table) -> Option<(String, String, toml::de::Error)> {
    for (name, value) in root {
        let e = match name.as_str() {
            "server" => fails_as::<ServerConfig>(value),
            "webhooks" => fails_as::<WebhookSettings>(value),
            "console" => fails_as::<ConsoleConfig>(value),
            "store" => fails_as::<StoreConfig>(value),
            "metrics" => fails_as::<MetricsConfig>(value),
            "tls" => fails_as::<TlsConfig>(value),
            "redis" => fails_as::<RedisConfig>(value),
            "apps" => {
                if let Value::Array(apps) = value {
                    if let Some(found) = apps.iter().enumerate().find_map(|(i, a)| locate_app(i, a))
                    {
                        return Some(found);
                    }
                }
                None
            }
            _ => None,
        };
        if let Some(e) = e {
            return Some(named(&format!("[{name}]"), name, "", e));
        }
    }
    None
}

fn locate_app(i: usize, app: &Value) -> Option<(String, String, toml::de::Error)> {
    let path = format!("apps[{i}]");
    let id = app
        .get("id")
        .and_then(Value::as_str)
        .map(|id| format!(" (id `{id}`)"))
        .unwrap_or_default();
    if let Some(e) = app.get("limits").and_then(fails_as::<Limits>) {
        let p = format!("{path}.limits");
        return Some(named(&p, &p, &id, e));
    }
    if let Some(Value::Array(hooks)) = app.get("webhooks") {
        for (j, hook) in hooks.iter().enumerate() {
            if let Some(e) = fails_as::<WebhookTarget>(hook) {
                let p = format!("{path}.webhooks[{j}]");
                return Some(named(&p, &p, &id, e));
            }
        }
    }
    let e = fails_as::<App>(app)?;
    Some(named(&path, &path, &id, e))
}

/// `server.port` when one key is at fault, else `in [server]` (`in apps[1] (id `b`)`).
fn named(
    table: &str,
    dotted: &str,
    id: &str,
    e: toml::de::Error,
) -> (String, String, toml::de::Error) {
    match key_of(&e) {
        Some(key) => {
            let setting = format!("{dotted}.{key}");
            (format!("{setting}{id}"), setting, e)
        }
        None => (format!("in {table}{id}"), String::new(), e),
    }
}
