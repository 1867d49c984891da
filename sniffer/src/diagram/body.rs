//! `--body body.md`: one section per message in the mkdocs-material shape of the reference
//! pages: a title, who -> whom, and "Header"/"Body" tabs with titled fenced blocks.
use super::model::Msg;

/// The section title: `METHOD PATH` or `STATUS REASON PATH`.
pub fn title(m: &Msg) -> String {
    if m.request {
        format!("{} {}", m.method, m.path())
    } else {
        let status = m.status.map_or("?".to_owned(), |s| s.to_string());
        format!("{status} {} {}", m.reason, m.path())
    }
}

fn fenced(lang: &str, title: &str, lines: &mut dyn Iterator<Item = &str>) -> String {
    let mut s = format!(
        "    ``` {lang} title=\"{}\" linenums=\"1\"\n",
        title.replace('"', "'")
    );
    for l in lines {
        if l.is_empty() {
            s.push('\n');
        } else {
            s.push_str("    ");
            s.push_str(l);
            s.push('\n');
        }
    }
    s.push_str("    ```\n");
    s
}

/// The body page for `msgs`.
pub fn page(msgs: &[Msg]) -> String {
    let mut out = String::new();
    for m in msgs {
        let t = title(m);
        out.push_str(&format!("### ({}) {t}\n", m.number));
        let arrow = if m.request { "-->" } else { "<--" };
        out.push_str(&format!("`{}` {arrow} `{}`\n\n", m.from, m.to));
        out.push_str("=== \"Header\"\n");
        let headers: Vec<String> = m.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        out.push_str(&fenced("http", &t, &mut headers.iter().map(String::as_str)));
        out.push('\n');
        out.push_str("=== \"Body\"\n");
        let lang = if m.body == "none" || m.body.starts_with('{') || m.body.starts_with('[') {
            "json"
        } else {
            "text"
        };
        out.push_str(&fenced(lang, &t, &mut m.body.lines()));
        out.push_str("\n\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_in_the_reference_shape() {
        let m = Msg {
            number: 2,
            request: false,
            from: "openstack".into(),
            to: "keystone".into(),
            method: "GET".into(),
            url: "http://h/identity/".into(),
            status: Some(300),
            reason: "MULTIPLE CHOICES".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: "{\n  \"a\": 1\n}".into(),
            exchange: None,
            ..Default::default()
        };
        assert_eq!(
            page(&[m]),
            "### (2) 300 MULTIPLE CHOICES /identity/\n`openstack` <-- `keystone`\n\n=== \"Header\"\n    ``` http title=\"300 MULTIPLE CHOICES /identity/\" linenums=\"1\"\n    Content-Type: application/json\n    ```\n\n=== \"Body\"\n    ``` json title=\"300 MULTIPLE CHOICES /identity/\" linenums=\"1\"\n    {\n      \"a\": 1\n    }\n    ```\n\n\n"
        );
    }
}
