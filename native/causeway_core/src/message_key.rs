//! The key a send and its receive share (the correlator pairs them by it):
//! a hash of the message's external term format, with OTP's call and cast
//! envelopes taken off. A `GenServer.call` traced on the caller's side is
//! a send of `{:"$gen_call", from, request}`; the callee's side, watched
//! through `:sys` hooks or instrumented, records the `request` it handled
//! (and a cast's `{:"$gen_cast", msg}` as `msg`): both get the key of the
//! request, so the receive links to its send whichever way each side was
//! recorded.

use crate::etf::{
    hash_bytes, ATOM_EXT, ATOM_UTF8_EXT, BINARY_EXT, BIT_BINARY_EXT, INTEGER_EXT, LARGE_TUPLE_EXT,
    LIST_EXT, MAP_EXT, NEW_FLOAT_EXT, NEW_PID_EXT, NIL_EXT, PID_EXT, SMALL_ATOM_EXT,
    SMALL_ATOM_UTF8_EXT, SMALL_BIG_EXT, SMALL_INTEGER_EXT, SMALL_TUPLE_EXT, STRING_EXT, VERSION,
};

const NEW_REFERENCE_EXT: u8 = 114;
const NEWER_REFERENCE_EXT: u8 = 90;
const LARGE_BIG_EXT: u8 = 111;
/// How deep the skipped `from` may nest (it is `{pid, ref}` or
/// `{pid, [:alias | ref]}`; anything deeper is not an OTP envelope).
const MAX_DEPTH: usize = 8;

/// The key of a message (its stored bytes, version byte or not).
pub fn message_key(bytes: &[u8]) -> u64 {
    let b = bytes.strip_prefix(&[VERSION]).unwrap_or(bytes);
    hash_bytes(otp_payload(b).unwrap_or(b))
}

/// The request of `{:"$gen_call", from, request}` or the message of
/// `{:"$gen_cast", msg}`, as bytes.
fn otp_payload(b: &[u8]) -> Option<&[u8]> {
    // Causeway's encoder writes every tuple as LARGE_TUPLE_EXT,
    // term_to_binary small ones as SMALL_TUPLE_EXT
    let (arity, rest) = match b.split_first()? {
        (&SMALL_TUPLE_EXT, rest) => (*rest.first()? as usize, rest.get(1..)?),
        (&LARGE_TUPLE_EXT, _) => (be32(b, 1)?, b.get(5..)?),
        _ => return None,
    };
    let (name, mut pos) = atom(rest)?;
    match (arity, name) {
        (3, b"$gen_call") => {
            pos += skip(&rest[pos..], 0)?;
            Some(&rest[pos..])
        }
        (2, b"$gen_cast") => Some(&rest[pos..]),
        _ => None,
    }
}

/// An atom's name and the bytes its encoding takes.
fn atom(b: &[u8]) -> Option<(&[u8], usize)> {
    let (&tag, _) = b.split_first()?;
    let (len, head) = match tag {
        SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => (*b.get(1)? as usize, 2),
        ATOM_EXT | ATOM_UTF8_EXT => (u16::from_be_bytes([*b.get(1)?, *b.get(2)?]) as usize, 3),
        _ => return None,
    };
    Some((b.get(head..head + len)?, head + len))
}

fn be32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// The length of the term encoded at the start of `b`, for the shapes a
/// `from` has (and the plain scalars); `None` for anything else.
fn skip(b: &[u8], depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let (&tag, _) = b.split_first()?;
    let fixed = |n: usize| (b.len() > n).then_some(n + 1);
    match tag {
        SMALL_INTEGER_EXT => fixed(1),
        INTEGER_EXT => fixed(4),
        NEW_FLOAT_EXT => fixed(8),
        NIL_EXT => Some(1),
        ATOM_EXT | ATOM_UTF8_EXT | SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => atom(b).map(|(_, n)| n),
        PID_EXT | NEW_PID_EXT => {
            let (_, node) = atom(&b[1..])?;
            let n = 1 + node + if tag == PID_EXT { 9 } else { 12 };
            (b.len() >= n).then_some(n)
        }
        NEW_REFERENCE_EXT | NEWER_REFERENCE_EXT => {
            let words = u16::from_be_bytes([*b.get(1)?, *b.get(2)?]) as usize;
            let (_, node) = atom(b.get(3..)?)?;
            let creation = if tag == NEW_REFERENCE_EXT { 1 } else { 4 };
            let n = 3 + node + creation + 4 * words;
            (b.len() >= n).then_some(n)
        }
        SMALL_TUPLE_EXT | LARGE_TUPLE_EXT => {
            let (arity, mut n) = if tag == SMALL_TUPLE_EXT {
                (*b.get(1)? as usize, 2)
            } else {
                (be32(b, 1)?, 5)
            };
            for _ in 0..arity {
                n += skip(b.get(n..)?, depth + 1)?;
            }
            Some(n)
        }
        LIST_EXT => {
            let len = be32(b, 1)?;
            let mut n = 5;
            for _ in 0..=len {
                // the elements, then the tail
                n += skip(b.get(n..)?, depth + 1)?;
            }
            Some(n)
        }
        STRING_EXT => {
            let n = 3 + u16::from_be_bytes([*b.get(1)?, *b.get(2)?]) as usize;
            (b.len() >= n).then_some(n)
        }
        BINARY_EXT => {
            let n = 5 + be32(b, 1)?;
            (b.len() >= n).then_some(n)
        }
        BIT_BINARY_EXT => {
            let n = 6 + be32(b, 1)?;
            (b.len() >= n).then_some(n)
        }
        SMALL_BIG_EXT => {
            let n = 3 + *b.get(1)? as usize;
            (b.len() >= n).then_some(n)
        }
        LARGE_BIG_EXT => {
            let n = 6 + be32(b, 1)?;
            (b.len() >= n).then_some(n)
        }
        MAP_EXT => {
            let pairs = be32(b, 1)?;
            let mut n = 5;
            for _ in 0..pairs.saturating_mul(2) {
                n += skip(b.get(n..)?, depth + 1)?;
            }
            Some(n)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etf::EtfWriter;
    use crate::event::PidRec;

    fn pid() -> Vec<u8> {
        crate::etf::encode_pid(&PidRec {
            node: "a@b".into(),
            id: 7,
            serial: 1,
            creation: 3,
        })[1..]
            .to_vec()
    }

    fn reference() -> Vec<u8> {
        let mut r = vec![NEWER_REFERENCE_EXT, 0, 3, SMALL_ATOM_UTF8_EXT, 3];
        r.extend_from_slice(b"a@b");
        r.extend_from_slice(&[0, 0, 0, 3]);
        r.extend_from_slice(&[1; 12]);
        r
    }

    fn request() -> Vec<u8> {
        let mut w = EtfWriter::new();
        w.tuple_header(3);
        w.atom("add");
        w.atom("plum");
        w.int(4);
        w.into_bytes()
    }

    fn envelope(from: Vec<u8>) -> Vec<u8> {
        let mut w = EtfWriter::with_version();
        w.tuple_header(3);
        w.atom("$gen_call");
        let mut b = w.into_bytes();
        b.extend(from);
        b.extend(request());
        b
    }

    #[test]
    fn a_call_envelope_and_its_request_share_a_key() {
        let mut plain = vec![VERSION];
        plain.extend(request());
        let want = message_key(&plain);
        assert_eq!(
            message_key(&request()),
            want,
            "with or without the version byte"
        );
        // {pid, ref} and OTP 25's {pid, [:alias | ref]}
        let mut from = vec![SMALL_TUPLE_EXT, 2];
        from.extend(pid());
        from.extend(reference());
        assert_eq!(message_key(&envelope(from)), want);
        let mut alias = vec![SMALL_TUPLE_EXT, 2];
        alias.extend(pid());
        alias.extend([LIST_EXT, 0, 0, 0, 1, SMALL_ATOM_UTF8_EXT, 5]);
        alias.extend(b"alias");
        alias.extend(reference());
        assert_eq!(message_key(&envelope(alias)), want);

        let mut cast = EtfWriter::with_version();
        cast.tuple_header(2);
        cast.atom("$gen_cast");
        let mut cast = cast.into_bytes();
        cast.extend(request());
        assert_eq!(message_key(&cast), want);

        // as Causeway's own encoder writes it: LARGE_TUPLE_EXT
        let mut large = vec![VERSION, LARGE_TUPLE_EXT, 0, 0, 0, 3, SMALL_ATOM_UTF8_EXT, 9];
        large.extend(b"$gen_call");
        large.extend([LARGE_TUPLE_EXT, 0, 0, 0, 2]);
        large.extend(pid());
        large.extend(reference());
        large.extend(request());
        assert_eq!(message_key(&large), want);
    }

    #[test]
    fn other_messages_and_broken_envelopes_keep_their_own_key() {
        let mut w = EtfWriter::with_version();
        w.tuple_header(3);
        w.atom("$gen_other");
        w.nil();
        w.nil();
        let other = w.into_bytes();
        assert_ne!(message_key(&other), message_key(&[NIL_EXT]));
        // a truncated envelope, garbage: hashed whole, never a panic
        let env = envelope(vec![SMALL_TUPLE_EXT, 2]);
        for cut in 0..env.len() {
            let _ = message_key(&env[..cut]);
        }
        let _ = message_key(&[SMALL_TUPLE_EXT, 3, 119, 255]);
    }
}
