//! `--dump-streams DIR`: each connection's two byte streams as files, plus `index.jsonl` with
//! one record per connection (who, addresses, sizes, and every gap with its offset and cause).
//!
//! A stream file holds the captured bytes in order with gaps left out; the index says where
//! each gap was, so stream offset = file offset + the gap bytes before it.
use std::{collections::HashMap, io::Write as _, sync::Arc};

use serde::Serialize;

use super::{
    output::{Health, Output, Outputs},
    safe_open::{OpenError, OutDir},
};
use crate::{
    conns::{Conn, ConnSink, End},
    events::Dir,
    procs::ProcTable,
    stream::{GapKind, Piece, StreamStats},
};

#[derive(Serialize)]
struct GapRecord {
    off: u64,
    len: u64,
    kind: GapKind,
}

#[derive(Serialize)]
struct DirRecord {
    /// File name in the dump directory, when any byte was captured.
    file: Option<String>,
    #[serde(flatten)]
    stats: StreamStats,
    gaps: Vec<GapRecord>,
}

/// One line of index.jsonl.
#[derive(Serialize)]
struct ConnRecord<'a> {
    id: u64,
    pid: u32,
    comm: String,
    cmdline: &'a [String],
    fd: i32,
    role: &'static str,
    transport: String,
    local: String,
    peer: String,
    /// The socket's network namespace (inode number), when the kernel told.
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
    opened_ns: u64,
    ended_ns: Option<u64>,
    end: Option<End>,
    open_lost: bool,
    /// Whether the streams' lengths are the kernel's final counts.
    end_known: bool,
    /// TLS: the streams are the plaintext (when `read`); the bytes on the wire were counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsRecord>,
    send: DirRecord,
    recv: DirRecord,
}

#[derive(Serialize)]
struct TlsRecord {
    /// Plaintext came from the TLS library.
    read: bool,
    ciphertext_sent: u64,
    ciphertext_received: u64,
}

#[derive(Default)]
struct Open {
    files: [Option<(String, Output)>; 2],
    gaps: [Vec<GapRecord>; 2],
}

pub struct DumpSink {
    dir: OutDir,
    /// Counts in connections.
    index: Output,
    /// Every stream file's, in bytes.
    streams: Arc<Health>,
    open: HashMap<u64, Open>,
}

/// A name that is safe as a file name part.
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl DumpSink {
    /// Writes into `dir` (opened by [`OutDir::open`]); its `index.jsonl` is created now.
    pub fn create(dir: OutDir, outputs: &Outputs) -> Result<Self, OpenError> {
        let index_path = dir.path().join("index.jsonl");
        let index = dir
            .create_file("index.jsonl")
            .map_err(|error| OpenError::Io {
                path: index_path.clone(),
                error,
            })?;
        let index = outputs.writer(Box::new(index), index_path.display(), "connections");
        let streams = outputs.track(
            format!("the stream files in {}", dir.path().display()),
            "stream bytes",
        );
        Ok(Self {
            dir,
            index,
            streams,
            open: HashMap::new(),
        })
    }

    fn write_pieces(&mut self, conn: &Conn, dir: Dir, pieces: &[Piece], procs: &ProcTable) {
        let entry = self.open.entry(conn.id).or_default();
        for p in pieces {
            match p {
                Piece::Data { bytes, .. } => {
                    let slot = &mut entry.files[dir.index()];
                    if slot.is_none() {
                        let name = format!(
                            "{:05}-{}-{}-fd{}.{}",
                            conn.id,
                            file_safe(&procs.name(conn.tgid)),
                            conn.tgid,
                            conn.fd,
                            dir.name()
                        );
                        match self.dir.create_file(&name) {
                            Ok(file) => {
                                let out = Output::new(Box::new(file), self.streams.clone());
                                *slot = Some((name, out));
                            }
                            // Tried again with the stream's next bytes.
                            Err(e) => self.streams.failed(bytes.len() as u64, &e),
                        }
                    }
                    if let Some((_, w)) = slot {
                        w.bytes(bytes);
                    }
                }
                Piece::Gap { off, len, kind, .. } => entry.gaps[dir.index()].push(GapRecord {
                    off: *off,
                    len: *len,
                    kind: *kind,
                }),
            }
        }
    }

    fn write_index(&mut self, conn: &Conn, procs: &ProcTable) {
        let mut entry = self.open.remove(&conn.id).unwrap_or_default();
        let mut dir_record = |d: Dir| -> DirRecord {
            let file = entry.files[d.index()].take().map(|(name, mut w)| {
                w.flush();
                name
            });
            DirRecord {
                file,
                stats: conn.stream(d).stats,
                gaps: std::mem::take(&mut entry.gaps[d.index()]),
            }
        };
        let send = dir_record(Dir::Send);
        let recv = dir_record(Dir::Recv);
        let proc = procs.get(conn.tgid);
        let rec = ConnRecord {
            id: conn.id,
            pid: conn.tgid,
            comm: procs.name(conn.tgid),
            cmdline: proc.map(|p| p.cmdline.as_slice()).unwrap_or_default(),
            fd: conn.fd,
            role: conn.role.name(),
            transport: conn.transport.name(),
            local: conn.local.to_string(),
            peer: conn.peer.to_string(),
            netns: (conn.netns != 0).then_some(conn.netns),
            opened_ns: conn.opened_ns,
            ended_ns: conn.ended.map(|e| e.0),
            end: conn.ended.map(|e| e.1),
            open_lost: conn.open_lost,
            end_known: conn.end_known,
            tls: conn.tls.map(|t| TlsRecord {
                read: t.read,
                ciphertext_sent: t.ciphertext[Dir::Send.index()],
                ciphertext_received: t.ciphertext[Dir::Recv.index()],
            }),
            send,
            recv,
        };
        self.index.record(1, |b| {
            serde_json::to_writer(&mut *b, &rec)?;
            b.write_all(b"\n")
        });
        self.index.flush();
    }
}

impl ConnSink for DumpSink {
    fn pieces(&mut self, conn: &Conn, dir: Dir, pieces: &[Piece], procs: &ProcTable) {
        self.write_pieces(conn, dir, pieces, procs);
    }

    fn ended(&mut self, conn: &Conn, procs: &ProcTable) {
        self.write_index(conn, procs);
    }

    fn close(&mut self) {
        // Connections still open at the end were ended by the table before this.
        self.open.clear();
        self.index.flush();
    }
}
