//! `--placeholders`: ids in paths become names, as the reference pages write them by hand:
//! `/v2/images/a42bfade-...` -> `/v2/images/{image_id}`, `/v1/AUTH_7c4c...` -> `/v1/{account}`,
//! other ids `{id1}`, `{id2}`... The same id is always the same name.
use std::collections::HashMap;

use regex::Regex;

#[derive(Debug)]
pub struct Placeholders {
    uuid: Regex,
    hex32: Regex,
    names: HashMap<String, String>,
    /// (name, value) in order of first use.
    pub table: Vec<(String, String)>,
    next_id: usize,
}

impl Default for Placeholders {
    fn default() -> Self {
        Self::new()
    }
}

impl Placeholders {
    pub fn new() -> Self {
        Self {
            uuid: Regex::new(
                r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
            )
            .expect("valid regex"),
            hex32: Regex::new(r"^[0-9a-fA-F]{32}$").expect("valid regex"),
            names: HashMap::new(),
            table: Vec::new(),
            next_id: 0,
        }
    }

    /// The name for `value`, found after path segment `before`.
    fn name(&mut self, value: &str, before: Option<&str>) -> String {
        if let Some(n) = self.names.get(value) {
            return n.clone();
        }
        let name = if value.starts_with("AUTH_") {
            "{account}".to_owned()
        } else {
            match before.map(|b| b.strip_suffix('s').unwrap_or(b)) {
                Some(b)
                    if !b.is_empty()
                        && b.chars()
                            .all(|c| c.is_ascii_alphabetic() || c == '_' || c == '-') =>
                {
                    format!("{{{}_id}}", b.replace('-', "_"))
                }
                _ => {
                    self.next_id += 1;
                    format!("{{id{}}}", self.next_id)
                }
            }
        };
        // Two different ids after the same segment: number the later ones.
        let mut unique = name.clone();
        let mut k = 1;
        while self.table.iter().any(|(n, _)| *n == unique) {
            k += 1;
            unique = format!("{}{k}}}", name.trim_end_matches('}'));
        }
        self.names.insert(value.to_owned(), unique.clone());
        self.table.push((unique.clone(), value.to_owned()));
        unique
    }

    /// `path` (with its query) with ids replaced.
    pub fn apply(&mut self, path: &str) -> String {
        let (p, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let segs: Vec<&str> = p.split('/').collect();
        let mut out = Vec::with_capacity(segs.len());
        for (i, s) in segs.iter().enumerate() {
            let is_id = self.uuid.is_match(s)
                || self.hex32.is_match(s)
                || s.strip_prefix("AUTH_")
                    .is_some_and(|h| self.hex32.is_match(h));
            if is_id {
                let before = i.checked_sub(1).map(|j| segs[j]);
                out.push(self.name(s, before));
            } else {
                out.push((*s).to_owned());
            }
        }
        let mut p = out.join("/");
        if let Some(q) = query {
            p.push('?');
            p.push_str(q);
        }
        p
    }

    /// The `| variables | values |` table, empty when nothing was replaced.
    pub fn markdown_table(&self) -> String {
        if self.table.is_empty() {
            return String::new();
        }
        let mut s = String::from("| variables | values |\n| --- | --- |\n");
        for (n, v) in &self.table {
            s.push_str(&format!("| {n} | {v} |\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_names_from_the_segment_before() {
        let mut p = Placeholders::new();
        assert_eq!(
            p.apply("/v2/images/a42bfade-78ec-4c95-b7b4-272ba265072c/file"),
            "/v2/images/{image_id}/file"
        );
        assert_eq!(
            p.apply("/v1/AUTH_7c4cda7e4807414bbdfcb22b535a9802/glance/a42bfade-78ec-4c95-b7b4-272ba265072c"),
            "/v1/{account}/glance/{image_id}"
        );
        assert_eq!(p.apply("/v3/7c4cda7e4807414bbdfcb22b535a9802"), "/v3/{id1}");
        assert_eq!(p.apply("/v2/images?limit=5"), "/v2/images?limit=5");
        assert_eq!(
            p.apply("/v2/images/0b0b0b0b-0000-0000-0000-000000000000"),
            "/v2/images/{image_id2}",
            "another image"
        );
        assert_eq!(
            p.markdown_table(),
            "| variables | values |\n| --- | --- |\n| {image_id} | a42bfade-78ec-4c95-b7b4-272ba265072c |\n| {account} | AUTH_7c4cda7e4807414bbdfcb22b535a9802 |\n| {id1} | 7c4cda7e4807414bbdfcb22b535a9802 |\n| {image_id2} | 0b0b0b0b-0000-0000-0000-000000000000 |\n"
        );
    }
}
