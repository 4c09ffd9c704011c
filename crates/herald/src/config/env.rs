//! The `HERALD_*` environment variables: the one catalogue of the names Herald reads, and how a
//! variable's text becomes a setting's value.
//!
//! The catalogue is derived from the settings' defaults, so a new setting gets its variable, and
//! its place in the messages, without a second list to keep in step.

use super::{insert, lookup, to_table, Config};
use herald_core::App;
use std::collections::BTreeMap;
use toml::Value;

/// Variables that set one setting by a short name; every other setting is
/// `HERALD_<SECTION>_<KEY>` or, for the embedded default app, `HERALD_DEFAULT_APP_<KEY>`.
/// A top-level setting that is not a section must be here (a test checks it).
pub(super) const SHORT_NAMES: &[(&str, &str)] = &[
    ("HERALD_HOST", "server.host"),
    ("HERALD_PORT", "server.port"),
    ("HERALD_ADAPTER", "adapter"),
];

/// Variables Herald or its tooling reads that are not settings: the config file (`--config`),
/// the log filter, and the binary the test scripts run.
pub(super) const NOT_SETTINGS: &[&str] = &["HERALD_CONFIG", "HERALD_LOG", "HERALD_BIN"];

/// Prefix of variables that belong to the test tooling (e.g. `HERALD_TEST_POSTGRES_URL`).
pub(super) const TEST_PREFIX: &str = "HERALD_TEST_";

const DEFAULT_APP: &str = "HERALD_DEFAULT_APP_";

/// Sections that `HERALD_<SECTION>_<KEY>` may address.
pub(super) const SECTIONS: &[&str] = &[
    "server", "webhooks", "console", "store", "metrics", "tls", "redis", "cluster",
];

/// Where a variable's value goes: a key of the configuration, or of the default app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub app: bool,
    pub path: Vec<String>,
    pub key: String,
}

impl Target {
    /// The setting as the messages and the README name it (`server.port`, `apps[0].limits.cache_ttl`).
    pub fn setting(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if self.app {
            parts.push("apps[0]");
        }
        parts.extend(self.path.iter().map(String::as_str));
        parts.push(&self.key);
        parts.join(".")
    }
}

fn target(app: bool, path: &[&str], key: &str) -> Target {
    Target {
        app,
        path: path.iter().map(|p| (*p).to_owned()).collect(),
        key: key.to_owned(),
    }
}

/// Every variable that sets something, with where it goes.
pub(super) fn variables() -> Vec<(String, Target)> {
    let mut out = Vec::new();
    for (name, setting) in SHORT_NAMES {
        let mut parts: Vec<&str> = setting.split('.').collect();
        let key = parts.pop().unwrap_or_default();
        out.push(((*name).to_owned(), target(false, &parts, key)));
    }
    let config = to_table(&Config::default());
    for section in SECTIONS {
        if let Some(Value::Table(t)) = config.get(*section) {
            for key in t.keys() {
                let name = format!("HERALD_{section}_{key}").to_ascii_uppercase();
                out.push((name, target(false, &[section], key)));
            }
        }
    }
    let app = to_table(&App::default_app());
    for key in app.keys() {
        out.push((
            format!("{DEFAULT_APP}{key}").to_ascii_uppercase(),
            target(true, &[], key),
        ));
    }
    if let Some(Value::Table(limits)) = app.get("limits") {
        for key in limits.keys() {
            out.push((
                format!("{DEFAULT_APP}{key}").to_ascii_uppercase(),
                target(true, &["limits"], key),
            ));
        }
    }
    out
}

/// The message for a variable that sets nothing: what the settings' variables look like, the
/// variables that are not settings, and the nearest known name.
fn unknown(name: &str, known: &[(String, Target)]) -> String {
    let guess = nearest(name, known.iter().map(|(n, _)| n.as_str()))
        .map(|n| format!(" (did you mean {n}?)"))
        .unwrap_or_default();
    let rest = &name["HERALD_".len()..];
    let lower = rest.to_ascii_lowercase();
    if let Some(section) = SECTIONS
        .iter()
        .find(|s| lower.starts_with(&format!("{s}_")))
    {
        return format!(
            "unknown setting {name}: [{section}] has no key `{}`{guess}",
            &lower[section.len() + 1..]
        );
    }
    if let Some(key) = rest.strip_prefix(&DEFAULT_APP["HERALD_".len()..]) {
        return format!(
            "unknown setting {name}: an app has no key or limit `{}`{guess}",
            key.to_ascii_lowercase()
        );
    }
    let short: Vec<&str> = SHORT_NAMES.iter().map(|(n, _)| *n).collect();
    format!(
        "unknown environment variable {name}{guess}: settings are {}, {DEFAULT_APP}<KEY> and HERALD_<SECTION>_<KEY> with SECTION one of {}; {} are read too",
        short.join(", "),
        SECTIONS.join(", "),
        NOT_SETTINGS.join(", "),
    )
}

/// The known name closest to `name` by edit distance, when it is close enough to be a typo.
fn nearest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let (best, d) = known
        .map(|k| (k, distance(name, k)))
        .min_by_key(|(_, d)| *d)?;
    (d <= 2.max(name.len() / 8)).then_some(best)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Applies the `HERALD_*` variables of `env` to the merged settings `root`; each value is first
/// checked alone against its setting's type, so an error names the variable.
pub(super) fn apply(
    root: &mut toml::Table,
    env: BTreeMap<String, String>,
    file_has_apps: bool,
) -> Result<(), String> {
    let known = variables();
    let config_template = to_table(&Config::default());
    let app_template = to_table(&App::default_app());
    for (name, raw) in &env {
        if NOT_SETTINGS.contains(&name.as_str()) || name.starts_with(TEST_PREFIX) {
            continue;
        }
        let Some((_, t)) = known.iter().find(|(n, _)| n == name) else {
            return Err(unknown(name, &known));
        };
        if t.app && file_has_apps {
            return Err(format!(
                "{name} applies to the embedded default app, but the config file lists its own [[apps]]; set the value in the file instead"
            ));
        }
        let template = if t.app {
            &app_template
        } else {
            &config_template
        };
        let current = lookup(template, &t.path, &t.key)
            .ok_or_else(|| format!("unknown setting {name}: no key `{}`", t.key))?;
        let value =
            parse_like(current, raw).map_err(|e| format!("invalid value for {name}: {e}"))?;
        // Alone in the defaults, the value must make a valid app or configuration: an error
        // here is this variable's, whatever the file holds.
        let mut alone = template.clone();
        insert(&mut alone, &t.path, t.key.clone(), value.clone())?;
        let checked = if t.app {
            Value::Table(alone).try_into::<App>().map(drop)
        } else {
            Value::Table(alone).try_into::<Config>().map(drop)
        };
        checked.map_err(|e| {
            format!(
                "invalid value for {name}: {}",
                humane(e.message().trim(), &t.setting())
            )
        })?;
        let target = if t.app {
            match root
                .get_mut("apps")
                .and_then(Value::as_array_mut)
                .and_then(|a| a.first_mut())
            {
                Some(Value::Table(t)) => t,
                _ => return Err("the default app is missing".into()),
            }
        } else {
            &mut *root
        };
        insert(target, &t.path, t.key.clone(), value)?;
    }
    Ok(())
}

/// serde's words for an integer beyond its type (`invalid value: integer `70000`, expected
/// u16`) in an operator's: the value and the range the setting takes.
pub(super) fn humane(message: &str, setting: &str) -> String {
    for (ty, max) in [
        ("u8", u64::from(u8::MAX)),
        ("u16", u64::from(u16::MAX)),
        ("u32", u64::from(u32::MAX)),
        ("usize", usize::MAX as u64),
        ("u64", u64::MAX),
    ] {
        if let Some(rest) = message.strip_suffix(&format!(", expected {ty}")) {
            let value = rest.strip_prefix("invalid value: integer ").unwrap_or(rest);
            let what = if setting.ends_with("port") {
                "a port number (0 picks a free one)"
            } else {
                "an integer"
            };
            return format!("{value} is out of range: expected {what} from 0 to {max}");
        }
    }
    message.to_owned()
}

/// Reads an environment string as the type the default value has.
fn parse_like(template: &Value, raw: &str) -> Result<Value, String> {
    match template {
        Value::String(_) => Ok(Value::String(raw.to_owned())),
        // Every integer setting is a count, size, port or duration: none is negative.
        Value::Integer(_) => match raw.trim().parse::<i64>() {
            Ok(n) if n < 0 => Err(format!("`{raw}` is out of range (at least 0)")),
            Ok(n) => Ok(Value::Integer(n)),
            Err(_) if raw.trim().parse::<i128>().is_ok() => {
                Err(format!("`{raw}` is out of range (at most {})", i64::MAX))
            }
            Err(_) => Err(format!("`{raw}` is not an integer")),
        },
        Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(format!("`{raw}` is not a boolean (true/false)")),
        },
        Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("`{raw}` is not a number")),
        Value::Array(_) | Value::Table(_) | Value::Datetime(_) => {
            let json: serde_json::Value =
                serde_json::from_str(raw).map_err(|e| format!("expected JSON: {e}"))?;
            Value::try_from(json).map_err(|e| e.to_string())
        }
    }
}
