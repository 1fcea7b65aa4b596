//! The on-disk event codec: `DiskEvent` (a MessagePack array written with
//! `rmp_serde`), its fast reader for the hot path, and decoding back to a
//! `StoredEvent`.
//!
//! Two encodings of an event, told apart by its `kind` byte, so a store of
//! schema version 1 opens as it is and its old events read on beside new
//! ones:
//! - version 1 (`kind` 0–15): `call_id` and `parent_id` as they are;
//! - version 2 (`kind` 16–31, the type + `KIND_V2`): both relative to the
//!   event's own id (`id_back`): an entry's call id is its own id, an
//!   exit's and a callee's the entry just before, so they take a byte or
//!   three instead of nine.

use super::*;

/// A pid on disk: node (name id), number, serial, creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DiskPid(
    pub(super) u32,
    pub(super) u32,
    pub(super) u32,
    pub(super) u32,
);

/// An event on disk (its id is the key). Times are deltas: `wall_ns` from the
/// time the id stands for (0..63 ns unless a burst ran ids ahead), and the
/// monotonic time by its offset to wall time (the same for a whole run), so
/// both compress to almost nothing.
/// Written borrowing the payload (`Cow::Borrowed`), read owning it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskEvent<'a> {
    pub(super) kind: u8,
    pub(super) wall_delta: i64,
    pub(super) mono_offset: i64,
    pub(super) pid: DiskPid,
    pub(super) call_id: u64,
    pub(super) parent_id: u64,
    pub(super) parent_link: u8,
    pub(super) module: u32,
    pub(super) function: u32,
    pub(super) arity: u32,
    pub(super) peer: Option<DiskPid>,
    #[serde(serialize_with = "cow_bytes", deserialize_with = "cow_bytes_owned")]
    pub(super) data: std::borrow::Cow<'a, [u8]>,
    pub(super) source: u8,
}

/// Added to the event type in `DiskEvent::kind` by the version-2 encoding.
pub(super) const KIND_V2: u8 = 16;

/// `other` (an id the event refers to: its call, its parent; 0 for none)
/// written relative to the event's `id`: 0 for none, 1 for `id` itself,
/// `id − other + 1` for an earlier id. A bijection of `u64` for every `id`
/// (the one value that would wrap to 0, `id + 1`, is written as itself).
pub(super) fn id_back(id: u64, other: u64) -> u64 {
    match other {
        0 => 0,
        o if o == id.wrapping_add(1) => o,
        o => id.wrapping_sub(o).wrapping_add(1),
    }
}

/// The inverse of `id_back`.
pub(super) fn id_forward(id: u64, back: u64) -> u64 {
    match back {
        0 => 0,
        b if b == id.wrapping_add(1) => b,
        b => id.wrapping_sub(b.wrapping_sub(1)),
    }
}

#[allow(clippy::ptr_arg)] // serde's `serialize_with` hands over `&FieldType`
pub(super) fn cow_bytes<S: serde::Serializer>(
    v: &std::borrow::Cow<'_, [u8]>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Reads msgpack `bin` (or an array of integers) into an owned payload.
pub(super) fn cow_bytes_owned<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<std::borrow::Cow<'static, [u8]>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(
            self,
            v: Vec<u8>,
        ) -> std::result::Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> std::result::Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = a.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_bytes(V).map(std::borrow::Cow::Owned)
}

/// A reader of the MessagePack subset `DiskEvent`s are written in (arrays,
/// integers, nil, bin), for the hot read path: `rmp_serde` goes through
/// serde's dynamic dispatch for every field. Anything it does not expect
/// gives `None`, and the caller decodes with `rmp_serde` instead; a test
/// checks both agree on every shape of event.
pub(super) struct MsgpackReader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> MsgpackReader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let v = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(v)
    }

    fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    /// Any integer, widened.
    fn int(&mut self) -> Option<i128> {
        Some(match self.byte()? {
            m @ 0x00..=0x7f => m as i128,
            m @ 0xe0..=0xff => m as i8 as i128,
            0xcc => self.byte()? as i128,
            0xcd => u16::from_be_bytes(self.be()?) as i128,
            0xce => u32::from_be_bytes(self.be()?) as i128,
            0xcf => u64::from_be_bytes(self.be()?) as i128,
            0xd0 => self.byte()? as i8 as i128,
            0xd1 => i16::from_be_bytes(self.be()?) as i128,
            0xd2 => i32::from_be_bytes(self.be()?) as i128,
            0xd3 => i64::from_be_bytes(self.be()?) as i128,
            _ => return None,
        })
    }

    fn num<T: TryFrom<i128>>(&mut self) -> Option<T> {
        T::try_from(self.int()?).ok()
    }

    fn array(&mut self) -> Option<usize> {
        Some(match self.byte()? {
            m @ 0x90..=0x9f => (m & 0x0f) as usize,
            0xdc => u16::from_be_bytes(self.be()?) as usize,
            0xdd => u32::from_be_bytes(self.be()?) as usize,
            _ => return None,
        })
    }

    fn bin(&mut self) -> Option<&'a [u8]> {
        let n = match self.byte()? {
            0xc4 => self.byte()? as usize,
            0xc5 => u16::from_be_bytes(self.be()?) as usize,
            0xc6 => u32::from_be_bytes(self.be()?) as usize,
            _ => return None,
        };
        self.bytes(n)
    }

    fn pid(&mut self) -> Option<DiskPid> {
        if self.array()? != 4 {
            return None;
        }
        Some(DiskPid(self.num()?, self.num()?, self.num()?, self.num()?))
    }

    /// A whole `DiskEvent` (13 fields, as `rmp_serde` writes it), nothing after.
    fn disk_event(bytes: &'a [u8]) -> Option<DiskEvent<'static>> {
        let mut r = MsgpackReader { b: bytes, pos: 0 };
        if r.array()? != 13 {
            return None;
        }
        let d = DiskEvent {
            kind: r.num()?,
            wall_delta: r.num()?,
            mono_offset: r.num()?,
            pid: r.pid()?,
            call_id: r.num()?,
            parent_id: r.num()?,
            parent_link: r.num()?,
            module: r.num()?,
            function: r.num()?,
            arity: r.num()?,
            peer: if r.b.get(r.pos) == Some(&0xc0) {
                r.pos += 1;
                None
            } else {
                Some(r.pid()?)
            },
            data: std::borrow::Cow::Owned(r.bin()?.to_vec()),
            source: r.num()?,
        };
        (r.pos == bytes.len()).then_some(d)
    }
}

impl Store {
    /// Decodes an event's stored bytes (from `events` or a covering list).
    pub fn decode_stored(&self, id: u64, bytes: &[u8]) -> Result<StoredEvent> {
        self.decode_event(id, bytes)
    }

    pub(super) fn decode_event(&self, id: u64, bytes: &[u8]) -> Result<StoredEvent> {
        let d: DiskEvent = match MsgpackReader::disk_event(bytes) {
            Some(d) => d,
            None => rmp_serde::from_slice(bytes)?,
        };
        let names = self
            .names
            .read()
            .map_err(|_| Error::Corrupt("name table lock".into()))?;
        let (kind, relative) = match d.kind.checked_sub(KIND_V2) {
            Some(k) if k < KIND_V2 => (k, true),
            _ => (d.kind, false),
        };
        let kind = EventType::from_u8(kind)
            .ok_or_else(|| Error::Corrupt(format!("event {id}: unknown type {}", d.kind)))?;
        let (call_id, parent_id) = if relative {
            (id_forward(id, d.call_id), id_forward(id, d.parent_id))
        } else {
            (d.call_id, d.parent_id)
        };
        let wall_ns = (id_to_wall_ns(id) as i64).wrapping_add(d.wall_delta);
        Ok(StoredEvent {
            id,
            kind,
            mono_ns: wall_ns.wrapping_sub(d.mono_offset),
            wall_ns,
            pid: self.pid_of(d.pid, &names),
            call_id,
            parent_id,
            parent_link: LinkKind::from_u8(d.parent_link),
            module: names.shared(d.module).cloned(),
            function: names.shared(d.function).cloned(),
            arity: d.arity,
            peer: d.peer.map(|p| self.pid_of(p, &names)),
            data: d.data.into_owned(),
            source: match d.source {
                1 => Source::Tracer,
                2 => Source::Watch,
                _ => Source::Runtime,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{DiskEvent, DiskPid, MsgpackReader};
    use proptest::prelude::*;
    use std::borrow::Cow;

    fn pid() -> impl Strategy<Value = DiskPid> {
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>())
            .prop_map(|(a, b, c, d)| DiskPid(a, b, c, d))
    }

    fn edge_i64() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            -40i64..300,
            Just(i64::MIN),
            Just(i64::MAX),
            Just(-129),
            Just(-32769),
            Just(65536),
        ]
    }

    fn edge_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            0u64..300,
            Just(u64::MAX),
            Just(65536),
            Just(1 << 32)
        ]
    }

    prop_compose! {
        fn disk_event()(
            kind in any::<u8>(),
            wall_delta in edge_i64(),
            mono_offset in edge_i64(),
            pid in pid(),
            call_id in edge_u64(),
            parent_id in edge_u64(),
            parent_link in any::<u8>(),
            module in any::<u32>(),
            function in any::<u32>(),
            arity in any::<u32>(),
            peer in proptest::option::of(pid()),
            data in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(any::<u8>(), 65_530..65_540),
            ],
            source in any::<u8>(),
        ) -> DiskEvent<'static> {
            DiskEvent {
                kind, wall_delta, mono_offset, pid, call_id, parent_id, parent_link,
                module, function, arity, peer, data: Cow::Owned(data), source,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn ids_relative_to_the_event_round_trip_and_stay_small(
            id in edge_u64(),
            other in edge_u64(),
            near in 0u64..1_000_000,
        ) {
            use super::{id_back, id_forward};
            prop_assert_eq!(id_forward(id, id_back(id, other)), other);
            prop_assert_eq!(id_forward(id, id_back(id, id)), id);
            prop_assert_eq!(id_forward(id, id_back(id, id.wrapping_add(1))), id.wrapping_add(1));
            prop_assert_eq!(id_back(id, 0), 0);
            if id > near {
                // an earlier id nearby: a small number, whatever the ids
                prop_assert_eq!(id_back(id, id - near), near + 1);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn the_fast_reader_reads_what_rmp_serde_writes(d in disk_event()) {
            let mut buf = Vec::new();
            rmp_serde::encode::write(&mut buf, &d).unwrap();
            let slow: DiskEvent = rmp_serde::from_slice(&buf).unwrap();
            prop_assert_eq!(MsgpackReader::disk_event(&buf), Some(slow));
            // anything cut short or with trailing bytes is left to rmp_serde
            prop_assert_eq!(MsgpackReader::disk_event(&buf[..buf.len() - 1]), None);
            buf.push(0);
            prop_assert_eq!(MsgpackReader::disk_event(&buf), None);
        }
    }
}
