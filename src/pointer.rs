//! Reading the revision id out of uv's source-distribution pointer files.
//!
//! `revision.http` is an HTTP-cache file: a MessagePack payload `[id, hashes, size]` followed
//! by a cache-policy footer whose last 8 bytes hold the payload length (uv-client
//! `cached_client.rs`). `revision.rev` is a plain MessagePack `[cache_info, [id, hashes, size]]`.
//! uv decodes with `rmp_serde` in array form; both payloads start at offset 0, so a streaming
//! decoder reading one value from the start handles both, and the 0.6.x footer too.
//!
//! Anything unexpected yields `None`, and uv then removes nothing for that directory (it
//! ignores a pointer it cannot decode); we do the same, which is also the safe choice.

use rmpv::Value;

/// Which pointer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerKind {
    /// `revision.http`.
    Http,
    /// `revision.rev`.
    Local,
}

/// The revision id named by a pointer file's bytes.
pub fn revision_id(kind: PointerKind, bytes: &[u8]) -> Option<String> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value(&mut reader).ok()?;
    let revision = match kind {
        PointerKind::Http => value,
        PointerKind::Local => match value {
            Value::Array(mut items) if items.len() >= 2 => items.swap_remove(1),
            _ => return None,
        },
    };
    first_string(revision)
}

/// The first element of an array (a struct in rmp_serde's array form) when it is a string.
fn first_string(value: Value) -> Option<String> {
    match value {
        Value::Array(items) => match items.into_iter().next()? {
            Value::String(s) => s.into_str(),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    }

    fn revision(id: &str) -> Value {
        Value::Array(vec![Value::from(id), Value::Array(vec![]), Value::from(3804u32)])
    }

    #[test]
    fn http_pointer_with_footer() {
        let mut bytes = encode(&revision("6kNuivg0xX_3fTy3"));
        let len = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 7]);
        bytes.extend_from_slice(b"footer-policy-bytes");
        bytes.extend_from_slice(&len.to_le_bytes());
        assert_eq!(revision_id(PointerKind::Http, &bytes).as_deref(), Some("6kNuivg0xX_3fTy3"));
    }

    #[test]
    fn local_pointer() {
        let cache_info = Value::Array(vec![Value::from(1_795_490_083u64), Value::from(52u32)]);
        let bytes = encode(&Value::Array(vec![cache_info, revision("abc")]));
        assert_eq!(revision_id(PointerKind::Local, &bytes).as_deref(), Some("abc"));
    }

    #[test]
    fn garbage_is_none() {
        for bytes in [&b""[..], b"\xc1", b"\x91\x01", b"\x92\x01\x02", b"\xdd\xff\xff\xff\xff"] {
            assert_eq!(revision_id(PointerKind::Http, bytes), None);
            assert_eq!(revision_id(PointerKind::Local, bytes), None);
        }
    }
}
