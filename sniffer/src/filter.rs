//! `--filter FILE`: the `should_not_hook.json` filters engineers already keep.
//!
//! ```json
//! {"filters": [{"from": "glance-api", "to": "keystone", "method": "GET",
//!               "urls": ["/identity/{version}/limits"]}],
//!  "mappings": {"{uuid}": "([a-fA-F0-9-]+)", "{version}": "(v[0-9.]+)"}}
//! ```
//! Every key is optional; names compare case-insensitively; each url is a regular expression
//! searched in the URL after the mappings are substituted (`{uuid}` works without a mapping).
//! A message that matches any filter is left out.
use std::{collections::BTreeMap, path::Path};

use regex::Regex;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("cannot read filter file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("filter file {path}, line {line} column {column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("filter file {path}: url pattern {pattern:?}: {message}")]
    Pattern {
        path: String,
        pattern: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct FilterFile {
    #[serde(default)]
    filters: Vec<RuleFile>,
    #[serde(default)]
    mappings: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Rule {
    from: Option<String>,
    to: Option<String>,
    method: Option<String>,
    urls: Vec<Regex>,
}

/// The filters of one file.
#[derive(Debug, Default)]
pub struct Filter {
    rules: Vec<Rule>,
}

/// What a message is matched on.
pub struct Subject<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub method: &'a str,
    pub url: &'a str,
}

impl Filter {
    pub fn load(path: &Path) -> Result<Self, FilterError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FilterError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, FilterError> {
        let file: FilterFile = serde_json::from_str(text).map_err(|e| FilterError::Syntax {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e
                .to_string()
                .split(" at line")
                .next()
                .unwrap_or("")
                .to_owned(),
        })?;
        let mut mappings = file.mappings;
        mappings
            .entry("{uuid}".to_owned())
            .or_insert_with(|| "([a-fA-F0-9-]+)".to_owned());
        let mut rules = Vec::new();
        for r in file.filters {
            let mut urls = Vec::new();
            for u in &r.urls {
                let mut pattern = u.clone();
                for (k, v) in &mappings {
                    pattern = pattern.replace(k.as_str(), v);
                }
                let re = Regex::new(&pattern).map_err(|e| FilterError::Pattern {
                    path: path.to_owned(),
                    pattern: u.clone(),
                    message: e.to_string(),
                })?;
                urls.push(re);
            }
            rules.push(Rule {
                from: r.from,
                to: r.to,
                method: r.method,
                urls,
            });
        }
        Ok(Self { rules })
    }

    /// Whether a message with these attributes is left out.
    pub fn excludes(&self, s: &Subject<'_>) -> bool {
        let same = |want: &Option<String>, got: &str| {
            want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(got))
        };
        self.rules.iter().any(|r| {
            same(&r.from, s.from)
                && same(&r.to, s.to)
                && same(&r.method, s.method)
                && (r.urls.is_empty() || r.urls.iter().any(|re| re.is_match(s.url)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = r#"{
  "filters": [
    {"from": "glance-api", "to": "keystone", "method": "GET",
     "urls": ["/identity/{version}/limits", "/identity/{version}/registered_limits"]},
    {"from": "nova-compute", "to": "placement-api", "method": "GET",
     "urls": ["/placement/resource_providers", "/placement/resource_providers/{uuid}/inventories"]}
  ],
  "mappings": {"{uuid}": "([a-fA-F0-9-]+)", "{version}": "(v[0-9.]+)"}
}"#;

    fn subject<'a>(from: &'a str, to: &'a str, method: &'a str, url: &'a str) -> Subject<'a> {
        Subject {
            from,
            to,
            method,
            url,
        }
    }

    #[test]
    fn the_reference_example() {
        let f = Filter::parse(REFERENCE, "x.json").unwrap();
        assert!(f.excludes(&subject(
            "Glance-API",
            "keystone",
            "get",
            "http://h/identity/v3/limits?x=1"
        )));
        assert!(!f.excludes(&subject(
            "glance-api",
            "keystone",
            "POST",
            "http://h/identity/v3/limits"
        )));
        assert!(!f.excludes(&subject(
            "openstack",
            "keystone",
            "GET",
            "http://h/identity/v3/limits"
        )));
        assert!(f.excludes(&subject(
            "nova-compute",
            "placement-api",
            "GET",
            "http://h/placement/resource_providers/0c6b-ff/inventories"
        )));
    }

    #[test]
    fn missing_keys_match_anything() {
        let f = Filter::parse(r#"{"filters": [{"to": "swift-object-server"}]}"#, "f").unwrap();
        assert!(f.excludes(&subject(
            "swift-proxy-server",
            "swift-object-server",
            "PUT",
            "http://x/sda/1/a"
        )));
        assert!(!f.excludes(&subject(
            "glance-api",
            "swift-proxy-server",
            "PUT",
            "http://x/v1"
        )));
        let f = Filter::parse(r#"{"filters": [{"urls": ["/v2/images/{uuid}$"]}]}"#, "f").unwrap();
        assert!(f.excludes(&subject("a", "b", "GET", "http://x/v2/images/0a1b-2c")));
        assert!(!f.excludes(&subject("a", "b", "GET", "http://x/v2/images/0a1b-2c/file")));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e =
            Filter::parse("{\n  \"filters\": [\n    {\"from\": }\n  ]\n}", "bad.json").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("filter file bad.json, line 3 column 14: "),
            "{msg}"
        );
        let e = Filter::parse(r#"{"filters": [{"urls": ["("]}]}"#, "p.json").unwrap_err();
        assert!(e.to_string().contains("url pattern \"(\""));
        let e = Filter::parse(r#"{"filters": [{"form": "x"}]}"#, "k.json").unwrap_err();
        assert!(e.to_string().contains("unknown field `form`"), "{e}");
    }
}
