//! Results of one run: ordered JSON for machines and a table for people.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde::Serialize as DeriveSerialize;
use serde_json::Value;

/// Key/value pairs that keep their order in JSON.
#[derive(Debug, Default, Clone)]
pub struct Section(pub Vec<(String, Value)>);

impl Section {
    pub fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.0.push((key.to_string(), value.into()));
    }
}

impl Serialize for Section {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The outcome of one scenario.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub target: Section,
    pub params: Section,
    pub results: Section,
    /// Why the run does not count as clean (loss, errors, ...); empty when it does.
    pub failures: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.into(),
            ..Default::default()
        }
    }

    pub fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.put(key, value);
    }

    pub fn result(&mut self, key: &str, value: impl Into<Value>) {
        self.results.put(key, value);
    }

    /// Records `what` as a failure when `count` is not zero.
    pub fn fail_if(&mut self, count: u64, what: &str) {
        if count > 0 {
            self.failures.push(format!("{what}: {count}"));
        }
    }

    /// Records a failure that is no count (a bound not kept), with its reason.
    pub fn fail(&mut self, reason: String) {
        self.failures.push(reason);
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn to_json(&self) -> String {
        #[derive(DeriveSerialize)]
        struct Out<'a> {
            tool: String,
            scenario: &'a str,
            passed: bool,
            failures: &'a [String],
            target: &'a Section,
            params: &'a Section,
            results: &'a Section,
        }
        let out = Out {
            tool: format!("herald-bench {}", env!("CARGO_PKG_VERSION")),
            scenario: &self.scenario,
            passed: self.passed(),
            failures: &self.failures,
            target: &self.target,
            params: &self.params,
            results: &self.results,
        };
        serde_json::to_string_pretty(&out).expect("json")
    }

    pub fn table(&self) -> String {
        let mut rows = Vec::new();
        for (k, v) in &self.results.0 {
            flatten(k, v, &mut rows);
        }
        let params: Vec<String> = self
            .params
            .0
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect();
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("herald-bench {}  ({})\n", self.scenario, params.join(" "));
        for (k, v) in rows {
            out.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        if self.passed() {
            out.push_str("  result: clean (no loss, no errors)\n");
        } else {
            out.push_str(&format!(
                "  result: NOT CLEAN: {}\n",
                self.failures.join("; ")
            ));
        }
        out
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    if let Some(m) = v.as_object().filter(|m| m.contains_key("p50_ms")) {
        // A latency summary reads best on one line.
        let f = |k: &str| m.get(k).map(scalar).unwrap_or_default();
        rows.push((
            format!("{prefix} (ms)"),
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
                f("p50_ms"),
                f("p90_ms"),
                f("p99_ms"),
                f("p99_9_ms"),
                f("max_ms"),
                f("count")
            ),
        ));
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        // Long lists and lists of records (a soak's intervals) are for the JSON.
        Value::Array(a) if a.len() > 8 || a.iter().any(Value::is_object) => {
            rows.push((prefix.into(), format!("[{} values, see JSON]", a.len())))
        }
        other => rows.push((prefix.into(), scalar(other))),
    }
}

/// Rounds for display and JSON.
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_insertion_order_and_failures() {
        let mut r = Report::new("x");
        r.result("zeta", 1);
        r.result("alpha", 2);
        r.fail_if(0, "none");
        r.fail_if(3, "lost");
        let j = r.to_json();
        assert!(j.find("zeta").unwrap() < j.find("alpha").unwrap());
        assert!(j.contains("\"passed\": false"));
        assert!(j.contains("lost: 3"));
        assert!(r.table().contains("NOT CLEAN"));
    }

    #[test]
    fn table_flattens_nested_results() {
        let mut r = Report::new("x");
        r.result("errors", serde_json::json!({"closed": {"count": 2}}));
        r.result(
            "latency",
            serde_json::json!({"p50_ms": 1.0, "p99_ms": 1.5, "count": 3}),
        );
        let t = r.table();
        assert!(t.contains("errors.closed.count  2"), "{t}");
        assert!(t.contains("p99 1.5"), "{t}");
        assert!(
            t.find("errors").unwrap() < t.find("latency").unwrap(),
            "{t}"
        );
    }
}
