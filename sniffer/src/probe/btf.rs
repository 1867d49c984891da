//! A lean reader of a BTF blob (Documentation/bpf/btf.rst): the raw bytes and one offset per
//! type, nothing decoded ahead. sniffer needs a few dozen member offsets from the kernel's
//! BTF once at start; a reader that decodes every type into owned structures took ~35 MiB of
//! heap for a 6 MiB vmlinux blob, and that start-up peak was sniffer's peak RSS when idle.

/// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
const KIND_MAX: u32 = 19;

const MAGIC: u16 = 0xeb9f;
/// struct btf_header up to str_len.
const HEADER_LEN: usize = 24;
/// struct btf_type: name_off, info, size/type.
const TYPE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (magic {0:#06x})")]
    Magic(u16),
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("type {id} has unknown kind {kind}")]
    Kind { id: u32, kind: u32 },
    #[error("no type {0}")]
    NoType(u32),
}

/// One member of a struct or union.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub name: &'a str,
    pub type_id: u32,
    pub bit_offset: u32,
    /// Non-zero for a bitfield.
    pub bitfield_size: u32,
}

/// A BTF blob and where each type starts in it (type id `n` at `starts[n - 1]`).
pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    starts: Vec<u32>,
}

impl Btf {
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let magic = data
            .get(..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::Truncated(0))?;
        if magic != MAGIC {
            return Err(BtfError::Magic(magic));
        }
        let word = |at: usize| u32_at(&data, at);
        let hdr_len = word(4)? as usize;
        if hdr_len < HEADER_LEN {
            return Err(BtfError::Truncated(hdr_len));
        }
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        for r in [&types, &strings] {
            if r.end > data.len() {
                return Err(BtfError::Truncated(data.len()));
            }
        }
        let mut starts = Vec::new();
        let mut at = types.start;
        while at < types.end {
            let id = starts.len() as u32 + 1;
            let info = u32_at(&data, at + 4)?;
            let (kind, vlen) = (kind(info), vlen(info));
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                k if k <= KIND_MAX => 0,
                kind => return Err(BtfError::Kind { id, kind }),
            };
            starts.push(at as u32);
            at += TYPE_LEN + extra;
        }
        if at != types.end {
            return Err(BtfError::Truncated(at));
        }
        Ok(Self {
            data,
            strings,
            starts,
        })
    }

    fn start(&self, id: u32) -> Result<usize, BtfError> {
        id.checked_sub(1)
            .and_then(|i| self.starts.get(i as usize))
            .map(|&s| s as usize)
            .ok_or(BtfError::NoType(id))
    }

    /// The string at `off` in the string section ("" when out of range or not terminated).
    fn string(&self, off: u32) -> &str {
        let s = &self.data[self.strings.clone()];
        let Some(tail) = s.get(off as usize..) else {
            return "";
        };
        let end = tail.iter().position(|&b| b == 0).unwrap_or(0);
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    /// (name, info, size-or-type) of type `id`.
    fn header(&self, id: u32) -> Result<(&str, u32, u32), BtfError> {
        let at = self.start(id)?;
        Ok((
            self.string(u32_at(&self.data, at)?),
            u32_at(&self.data, at + 4)?,
            u32_at(&self.data, at + 8)?,
        ))
    }

    /// Ids of the types named `name`.
    pub fn ids_by_name<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        (1..=self.starts.len() as u32).filter(move |&id| {
            self.start(id)
                .and_then(|at| u32_at(&self.data, at))
                .is_ok_and(|off| self.string(off) == name)
        })
    }

    /// The struct or union named `name`.
    pub fn struct_named(&self, name: &str) -> Option<u32> {
        self.ids_by_name(name).find(|&id| {
            self.header(id)
                .is_ok_and(|(_, info, _)| matches!(kind(info), KIND_STRUCT | KIND_UNION))
        })
    }

    /// The struct or union behind `id`, through typedefs and qualifiers (bounded: BTF may loop
    /// only if malformed).
    pub fn struct_behind(&self, mut id: u32) -> Result<Option<u32>, BtfError> {
        for _ in 0..64 {
            let (_, info, next) = self.header(id)?;
            match kind(info) {
                KIND_STRUCT | KIND_UNION => return Ok(Some(id)),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = next;
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The members of struct or union `id`.
    pub fn members(&self, id: u32) -> Result<Vec<Member<'_>>, BtfError> {
        let (_, info, _) = self.header(id)?;
        if !matches!(kind(info), KIND_STRUCT | KIND_UNION) {
            return Ok(Vec::new());
        }
        let kind_flag = info >> 31 == 1;
        let at = self.start(id)? + TYPE_LEN;
        (0..vlen(info))
            .map(|i| {
                let m = at + 12 * i;
                let offset = u32_at(&self.data, m + 8)?;
                // With kind_flag the offset word holds the bitfield size in its top byte.
                let (bit_offset, bitfield_size) = if kind_flag {
                    (offset & 0xff_ffff, offset >> 24)
                } else {
                    (offset, 0)
                };
                Ok(Member {
                    name: self.string(u32_at(&self.data, m)?),
                    type_id: u32_at(&self.data, m + 4)?,
                    bit_offset,
                    bitfield_size,
                })
            })
            .collect()
    }
}

/// A type's kind and member count, from its info word.
fn kind(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

fn vlen(info: u32) -> usize {
    (info & 0xffff) as usize
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(BtfError::Truncated(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built by hand: int, struct inner { int a; int b:3 (kind_flag) }, typedef
    /// inner_t, const inner_t, struct outer { int x; <anonymous> const inner_t; }.
    pub(crate) fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0inner_t\0outer\0x\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut ty = |name: u32, kind: u32, flag: bool, vlen: u32, size: u32, extra: &[u32]| {
            t.extend_from_slice(&name.to_ne_bytes());
            let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
            t.extend_from_slice(&info.to_ne_bytes());
            t.extend_from_slice(&size.to_ne_bytes());
            for w in extra {
                t.extend_from_slice(&w.to_ne_bytes());
            }
        };
        // 1: int (4 bytes, 32 bits).
        ty(s("int"), KIND_INT, false, 0, 4, &[32]);
        // 2: struct inner, kind_flag: a at bit 0, b at bit 32 with 3 bits.
        ty(
            s("inner"),
            KIND_STRUCT,
            true,
            2,
            8,
            &[s("a"), 1, 0, s("b"), 1, (3 << 24) | 32],
        );
        // 3: typedef inner_t -> 2; 4: const -> 3.
        ty(s("inner_t"), KIND_TYPEDEF, false, 0, 2, &[]);
        ty(0, KIND_CONST, false, 0, 3, &[]);
        // 5: struct outer: x at 0, anonymous const inner_t at bit 64.
        ty(
            s("outer"),
            KIND_STRUCT,
            false,
            2,
            16,
            &[s("x"), 1, 0, 0, 4, 64],
        );
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_ne_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [
            HEADER_LEN as u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn types_members_and_names_of_a_hand_built_blob() {
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(btf.struct_named("outer"), Some(5));
        assert_eq!(
            btf.struct_named("inner_t"),
            None,
            "a typedef is not a struct"
        );
        assert_eq!(btf.ids_by_name("inner_t").collect::<Vec<_>>(), [3]);
        assert_eq!(
            btf.struct_behind(4),
            Ok(Some(2)),
            "through const and typedef"
        );
        assert_eq!(btf.struct_behind(1), Ok(None));
        let inner = btf.members(2).unwrap();
        assert_eq!(
            inner,
            [
                Member {
                    name: "a",
                    type_id: 1,
                    bit_offset: 0,
                    bitfield_size: 0
                },
                Member {
                    name: "b",
                    type_id: 1,
                    bit_offset: 32,
                    bitfield_size: 3
                },
            ]
        );
        let outer = btf.members(5).unwrap();
        assert_eq!(
            outer[1],
            Member {
                name: "",
                type_id: 4,
                bit_offset: 64,
                bitfield_size: 0
            }
        );
        assert_eq!(btf.header(6), Err(BtfError::NoType(6)));
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        assert_eq!(Btf::parse(Vec::new()).err(), Some(BtfError::Truncated(0)));
        assert_eq!(Btf::parse(vec![0; 40]).err(), Some(BtfError::Magic(0)));
        let b = blob();
        for cut in [3, 10, 30, b.len() - 1] {
            assert!(Btf::parse(b[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        // An unknown kind (31) in the first type.
        let mut bad = b.clone();
        bad[HEADER_LEN + 7] = 31;
        assert_eq!(
            Btf::parse(bad).err(),
            Some(BtfError::Kind { id: 1, kind: 31 })
        );
        // A string offset past the section reads as "".
        let mut far = b;
        far[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&9999u32.to_ne_bytes());
        let btf = Btf::parse(far).unwrap();
        assert_eq!(btf.header(1).unwrap().0, "");
    }
}
