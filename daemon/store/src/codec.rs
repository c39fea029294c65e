//! Byte layouts of what the redb backend keeps: a value with its revisions, and a log record of
//! one event. Big-endian integers, length-prefixed strings; no serde, so the layout is explicit.

use bytes::Bytes;

use crate::{Event, EventKind, KeyValue, Revision};

/// `[create u64][mod u64][value]`.
pub fn encode_value(create: Revision, modified: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_be_bytes());
    out.extend_from_slice(&modified.to_be_bytes());
    out.extend_from_slice(value);
    out
}

pub fn decode_value(key: &str, bytes: &[u8]) -> Option<KeyValue> {
    let create = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
    let modified = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(&bytes[16..]),
        create_revision: create,
        mod_revision: modified,
    })
}

/// A log record holds the events of one revision:
/// `[count u32]` then per event `[kind u8][key len u32][key][create u64][value len u32][value]`
/// (the revision is the record's key; for a delete the value is the key's last value).
pub fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(events.len() as u32).to_be_bytes());
    for e in events {
        out.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.extend_from_slice(&(e.kv.key.len() as u32).to_be_bytes());
        out.extend_from_slice(e.kv.key.as_bytes());
        out.extend_from_slice(&e.kv.create_revision.to_be_bytes());
        out.extend_from_slice(&(e.kv.value.len() as u32).to_be_bytes());
        out.extend_from_slice(&e.kv.value);
    }
    out
}

pub fn decode_events(revision: Revision, bytes: &[u8]) -> Option<Vec<Event>> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.u32()?;
    let mut events = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let kind = match r.take(1)?[0] {
            0 => EventKind::Put,
            _ => EventKind::Delete,
        };
        let key_len = r.u32()? as usize;
        let key = std::str::from_utf8(r.take(key_len)?).ok()?.to_owned();
        let create = r.u64()?;
        let value_len = r.u32()? as usize;
        let value = Bytes::copy_from_slice(r.take(value_len)?);
        events.push(Event {
            kind,
            kv: KeyValue {
                key,
                value,
                create_revision: create,
                mod_revision: revision,
            },
        });
    }
    Some(events)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let kv = decode_value("/a", &encode_value(3, 7, b"hello")).unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, &kv.value[..]), (3, 7, &b"hello"[..]));
        let events = vec![
            Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: "/a".into(),
                    value: Bytes::from_static(b"x"),
                    create_revision: 2,
                    mod_revision: 9,
                },
            },
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: "/b".into(),
                    value: Bytes::from_static(b"last"),
                    create_revision: 1,
                    mod_revision: 9,
                },
            },
        ];
        assert_eq!(decode_events(9, &encode_events(&events)).unwrap(), events);
        assert!(decode_events(9, &[0, 0, 0, 1, 0]).is_none());
    }
}
