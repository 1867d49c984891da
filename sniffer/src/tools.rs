//! The subcommands: the converters behind `sniffer diagram`, `sniffer har` and `sniffer merge`
//! (files in, files out), and `sniffer check`.
use std::{fs, io::Write as _, path::Path};

use crate::{
    cli::{DiagramArgs, HarArgs, MergeArgs, ReportArgs, Tool},
    diagram::{
        body, mermaid,
        model::{self, Msg, Paths},
    },
    exit,
    filter::Filter,
    har, merge, otlp, record,
    sinks::{
        log::record_entry,
        safe_open::{self, Target},
    },
};

/// A converter's failure, in one sentence naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// What was asked cannot be done: a file that cannot be read or is refused as an output.
    #[error("{0}")]
    Usage(String),
    /// An output passed its checks but could not be written (a full disk).
    #[error("{0}")]
    Write(String),
}

impl ToolError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ToolError::Usage(_) => exit::USAGE,
            ToolError::Write(_) => exit::OUTPUT_INCOMPLETE,
        }
    }
}

fn read(path: &Path) -> Result<String, ToolError> {
    fs::read_to_string(path)
        .map_err(|e| ToolError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// Writes each text to its file, once every file passed its checks (see [`safe_open`]).
pub fn write(outputs: &[(&Path, &str)]) -> Result<(), ToolError> {
    let usage = |e: safe_open::OpenError| ToolError::Usage(e.to_string());
    let targets = outputs
        .iter()
        .map(|(path, _)| Target::check(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    safe_open::distinct(&targets).map_err(usage)?;
    for (target, (path, text)) in targets.into_iter().zip(outputs) {
        let mut out = target.commit().map_err(usage)?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| ToolError::Write(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Runs a subcommand; its exit code when it succeeds.
pub fn run(tool: Tool) -> Result<u8, ToolError> {
    match tool {
        Tool::Diagram(a) => diagram(&a).map(|()| exit::OK),
        Tool::Har(a) => har_file(&a).map(|()| exit::OK),
        Tool::Merge(a) => merge_files(&a).map(|()| exit::OK),
        Tool::Report(a) => report(&a).map(|()| exit::OK),
        Tool::Check => Ok(crate::check::run()),
        Tool::Demo(_) | Tool::DemoPart(_) => Err(ToolError::Usage(
            "the demo runs from main, with its runtime".into(),
        )),
    }
}

/// The messages of a log or JSONL (by its name), less what `filter` leaves out.
pub fn messages(log: &Path, filter: Option<&Path>, paths: Paths) -> Result<Vec<Msg>, ToolError> {
    let text = read(log)?;
    let jsonl = log.extension().is_some_and(|e| e == "jsonl");
    let msgs = if jsonl {
        model::from_jsonl(&text)
    } else {
        model::from_log(&text)
    }
    .map_err(|e| ToolError::Usage(format!("{}: {e}", log.display())))?;
    if paths == Paths::Served && !msgs.iter().any(|m| m.served.is_some()) {
        eprintln!(
            "sniffer: {}: no exchange went through a reverse proxy whose hop was folded; the \
             paths are the ones the clients sent",
            log.display()
        );
    }
    Ok(match filter {
        Some(path) => {
            let f = Filter::load(path).map_err(|e| ToolError::Usage(e.to_string()))?;
            model::without(msgs, &f)
        }
        None => msgs,
    })
}

fn report(a: &ReportArgs) -> Result<(), ToolError> {
    let msgs = messages(&a.log, a.filter.as_deref(), a.paths)?;
    let source = a
        .log
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let page = crate::report::page(
        &msgs,
        &crate::report::Options {
            placeholders: a.placeholders,
            paths: a.paths,
            source,
        },
    );
    write(&[(&a.output, &page)])
}

fn diagram(a: &DiagramArgs) -> Result<(), ToolError> {
    let msgs = messages(&a.log, a.filter.as_deref(), a.paths)?;
    let d = mermaid::draw(
        &msgs,
        mermaid::Options {
            placeholders: a.placeholders,
            standalone: a.standalone,
            paths: a.paths,
        },
    );
    match &a.body {
        Some(b) => write(&[(&a.output, &d.text), (b, &body::page(&msgs))]),
        None => write(&[(&a.output, &d.text)]),
    }
}

fn har_file(a: &HarArgs) -> Result<(), ToolError> {
    let text = read(&a.jsonl)?;
    // A run without exchanges wrote an empty file: its HAR has no entries.
    let records = match record::read_jsonl(&text) {
        Ok(records) => records,
        Err(record::ReadError::Empty) => Vec::new(),
        Err(e) => return Err(ToolError::Usage(format!("{}: {e}", a.jsonl.display()))),
    };
    let doc = har::document(&records).map_err(|e| ToolError::Usage(e.to_string()))?;
    // serde_json writes valid UTF-8.
    write(&[(&a.output, &String::from_utf8_lossy(&doc))])
}

fn merge_files(a: &MergeArgs) -> Result<(), ToolError> {
    let endpoint = a
        .otlp
        .as_deref()
        .map(otlp::Endpoint::parse)
        .transpose()
        .map_err(|e| ToolError::Usage(format!("--otlp {e}")))?;
    let mut inputs = Vec::new();
    for path in &a.inputs {
        let text = read(path)?;
        let records = record::read_jsonl(&text)
            .map_err(|e| ToolError::Usage(format!("{}: {e}", path.display())))?;
        inputs.push(merge::Input {
            name: path.display().to_string(),
            records,
        });
    }
    let merged = merge::merge(&inputs);
    for w in &merged.warnings {
        eprintln!("sniffer merge: {w}");
    }
    let mut entries: Vec<(u64, String)> = merged
        .exchanges
        .iter()
        .flat_map(|j| {
            [true, false].into_iter().filter_map(|request| {
                let number = j.record.message(request)?.number?;
                Some((number, record_entry(&j.record, request)?))
            })
        })
        .collect();
    entries.sort_unstable_by_key(|(n, _)| *n);
    let log: String = entries.into_iter().map(|(_, e)| e).collect();
    let jsonl = match &a.jsonl {
        Some(_) => {
            let mut out = String::new();
            for j in &merged.exchanges {
                let line = serde_json::to_string(&j.record)
                    .map_err(|e| ToolError::Usage(format!("cannot encode a record: {e}")))?;
                out.push_str(&line);
                out.push('\n');
            }
            Some(out)
        }
        None => None,
    };
    match (&a.jsonl, &jsonl) {
        (Some(path), Some(text)) => write(&[(&a.output, &log), (path, text)])?,
        _ => write(&[(&a.output, &log)])?,
    }
    for line in merged.report() {
        eprintln!("sniffer merge: {line}");
    }
    match endpoint {
        Some(ep) => export(&merged, ep),
        None => Ok(()),
    }
}

/// How long `sniffer merge --otlp` waits for the backend at most, after the last span.
const MERGE_EXPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Sends a merged capture's spans; an error (exit code 74) when some did not arrive.
fn export(merged: &merge::Merged, ep: otlp::Endpoint) -> Result<(), ToolError> {
    let exporter = otlp::Exporter::start(ep.clone(), otlp::Options::default(), None)
        .map_err(|e| ToolError::Write(format!("cannot start the OTLP export: {e}")))?;
    for spans in otlp::merged::spans_of(merged) {
        exporter.send(spans);
    }
    let s = exporter.finish(MERGE_EXPORT_WAIT);
    eprintln!("sniffer merge: {}", s.line(&ep));
    let lost = s.dropped + s.failed + s.unsent + s.rejected;
    if lost > 0 {
        return Err(ToolError::Write(format!(
            "otlp {ep}: {lost} of {} spans did not arrive",
            s.offered
        )));
    }
    Ok(())
}
