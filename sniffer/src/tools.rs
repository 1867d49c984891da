//! The subcommands: the converters behind `sniffer diagram` and `sniffer har` (files in,
//! files out), and `sniffer check`.
use std::{fs, io::Write as _, path::Path};

use crate::{
    cli::{DiagramArgs, HarArgs, Tool},
    diagram::{body, mermaid, model},
    filter::Filter,
    har, sinks,
};

/// A converter's failure, in one sentence naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(String);

fn read(path: &Path) -> Result<String, ToolError> {
    fs::read_to_string(path).map_err(|e| ToolError(format!("cannot read {}: {e}", path.display())))
}

fn write(path: &Path, text: &str) -> Result<(), ToolError> {
    let err = |e: std::io::Error| ToolError(format!("cannot write {}: {e}", path.display()));
    let mut out = sinks::open_output(path).map_err(err)?;
    out.write_all(text.as_bytes()).map_err(err)?;
    out.flush().map_err(err)
}

/// Runs a subcommand; its exit code when it succeeds.
pub fn run(tool: Tool) -> Result<u8, ToolError> {
    match tool {
        Tool::Diagram(a) => diagram(&a).map(|()| 0),
        Tool::Har(a) => har_file(&a).map(|()| 0),
        Tool::Check => Ok(crate::check::run()),
    }
}

fn diagram(a: &DiagramArgs) -> Result<(), ToolError> {
    let text = read(&a.log)?;
    let jsonl = a.log.extension().is_some_and(|e| e == "jsonl");
    let msgs = if jsonl {
        model::from_jsonl(&text)
    } else {
        model::from_log(&text)
    }
    .map_err(|e| ToolError(format!("{}: {e}", a.log.display())))?;
    let msgs = match &a.filter {
        Some(path) => {
            let f = Filter::load(path).map_err(|e| ToolError(e.to_string()))?;
            model::without(msgs, &f)
        }
        None => msgs,
    };
    let d = mermaid::draw(
        &msgs,
        mermaid::Options {
            placeholders: a.placeholders,
            standalone: a.standalone,
        },
    );
    write(&a.output, &d.text)?;
    if let Some(b) = &a.body {
        write(b, &body::page(&msgs))?;
    }
    Ok(())
}

fn har_file(a: &HarArgs) -> Result<(), ToolError> {
    let text = read(&a.jsonl)?;
    let records =
        har::read_jsonl(&text).map_err(|e| ToolError(format!("{}: {e}", a.jsonl.display())))?;
    let doc = har::from_records(&records);
    let pretty = serde_json::to_string_pretty(&doc).map_err(|e| ToolError(e.to_string()))?;
    write(&a.output, &(pretty + "\n"))
}
