//! `--dump-streams DIR`: each connection's two byte streams as files, plus `index.jsonl` with
//! one record per connection (who, addresses, sizes, and every gap with its offset and cause).
//!
//! A stream file holds the captured bytes in order with gaps left out; the index says where
//! each gap was, so stream offset = file offset + the gap bytes before it.
use std::{
    collections::HashMap,
    fs,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::create_private;
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
    opened_ns: u64,
    ended_ns: Option<u64>,
    end: Option<End>,
    open_lost: bool,
    /// Whether the streams' lengths are the kernel's final counts.
    end_known: bool,
    send: DirRecord,
    recv: DirRecord,
}

#[derive(Default)]
struct Open {
    files: [Option<(String, BufWriter<fs::File>)>; 2],
    gaps: [Vec<GapRecord>; 2],
}

pub struct DumpSink {
    dir: PathBuf,
    index: BufWriter<fs::File>,
    open: HashMap<u64, Open>,
    /// First write error; later writes are skipped and the error is reported at the end.
    error: Option<io::Error>,
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
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let index = BufWriter::new(create_private(&dir.join("index.jsonl"))?);
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            open: HashMap::new(),
            error: None,
        })
    }

    fn record_error(&mut self, r: io::Result<()>) {
        if let Err(e) = r
            && self.error.is_none()
        {
            self.error = Some(e);
        }
    }

    fn write_pieces(
        &mut self,
        conn: &Conn,
        dir: Dir,
        pieces: &[Piece],
        procs: &ProcTable,
    ) -> io::Result<()> {
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
                        let file = create_private(&self.dir.join(&name))?;
                        *slot = Some((name, BufWriter::new(file)));
                    }
                    if let Some((_, w)) = slot {
                        w.write_all(bytes)?;
                    }
                }
                Piece::Gap { off, len, kind, .. } => entry.gaps[dir.index()].push(GapRecord {
                    off: *off,
                    len: *len,
                    kind: *kind,
                }),
            }
        }
        Ok(())
    }

    fn write_index(&mut self, conn: &Conn, procs: &ProcTable) -> io::Result<()> {
        let mut entry = self.open.remove(&conn.id).unwrap_or_default();
        let mut dir_record = |d: Dir| -> io::Result<DirRecord> {
            let file = match entry.files[d.index()].take() {
                Some((name, mut w)) => {
                    w.flush()?;
                    Some(name)
                }
                None => None,
            };
            Ok(DirRecord {
                file,
                stats: conn.stream(d).stats,
                gaps: std::mem::take(&mut entry.gaps[d.index()]),
            })
        };
        let send = dir_record(Dir::Send)?;
        let recv = dir_record(Dir::Recv)?;
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
            opened_ns: conn.opened_ns,
            ended_ns: conn.ended.map(|e| e.0),
            end: conn.ended.map(|e| e.1),
            open_lost: conn.open_lost,
            end_known: conn.end_known,
            send,
            recv,
        };
        serde_json::to_writer(&mut self.index, &rec)?;
        self.index.write_all(b"\n")?;
        self.index.flush()
    }
}

impl ConnSink for DumpSink {
    fn pieces(&mut self, conn: &Conn, dir: Dir, pieces: &[Piece], procs: &ProcTable) {
        if self.error.is_none() {
            let r = self.write_pieces(conn, dir, pieces, procs);
            self.record_error(r);
        }
    }

    fn ended(&mut self, conn: &Conn, procs: &ProcTable) {
        if self.error.is_none() {
            let r = self.write_index(conn, procs);
            self.record_error(r);
        } else {
            self.open.remove(&conn.id);
        }
    }

    fn close(&mut self) -> io::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => self.index.flush(),
        }
    }
}
