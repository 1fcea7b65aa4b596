//! Key layouts of every column family, shared by the writer and the
//! queries (see the table in `store`).

pub fn id(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// The trailing event id of an index key.
pub fn trailing_id(key: &[u8]) -> Option<u64> {
    let n = key.len();
    if n < 8 {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[n - 8..]);
    Some(u64::from_be_bytes(b))
}

pub fn pid(pid_key: [u8; 8], id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&pid_key);
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// `module · [function · [arity]]` (interned name ids).
pub fn mfa_prefix(module: u32, function: Option<u32>, arity: Option<u32>) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    k.extend_from_slice(&module.to_be_bytes());
    if let Some(f) = function {
        k.extend_from_slice(&f.to_be_bytes());
        if let Some(a) = arity {
            k.extend_from_slice(&a.to_be_bytes());
        }
    }
    k
}

pub fn mfa(module: u32, function: u32, arity: u32, id: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&module.to_be_bytes());
    k[4..8].copy_from_slice(&function.to_be_bytes());
    k[8..12].copy_from_slice(&arity.to_be_bytes());
    k[12..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn typed(kind: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = kind;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn call(call_id: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&call_id.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn link(from: u64, kind: u8, to: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&from.to_be_bytes());
    k[8] = kind;
    k[9..].copy_from_slice(&to.to_be_bytes());
    k
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
