//! The little of Kubernetes' protobuf encoding that kubectl sends where a JSON body is not
//! offered (`kubectl create token` posts its TokenRequest as protobuf): the `k8s\0` envelope
//! (runtime.Unknown: raw = 2) and TokenRequest (spec = 2: audiences = 1, boundObjectRef = 3
//! {kind = 1, apiVersion = 2, name = 3, uid = 4}, expirationSeconds = 4), read into the JSON shape
//! the handlers take; and the metadata of any object (ObjectMeta = 1: name = 1, namespace = 3,
//! labels = 11, annotations = 12, ownerReferences = 13 {kind = 1, name = 3, uid = 4,
//! apiVersion = 5, controller = 6}), enough to recognise a Job that `kubectl create job --from`
//! made from a CronJob's template. Unknown fields are skipped, as protobuf readers do.

use serde_json::{Value, json};

/// The media type of Kubernetes' protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The fields of one message, in order; None when it is not well formed.
fn fields(mut buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Field::Bytes(bytes)
            }
            1 => {
                buf = buf.get(8..)?;
                continue;
            }
            5 => {
                buf = buf.get(4..)?;
                continue;
            }
            _ => return None,
        };
        out.push((key >> 3, field));
    }
    Some(out)
}

fn bytes<'a>(fs: &[(u64, Field<'a>)], number: u64) -> Option<&'a [u8]> {
    fs.iter().rev().find_map(|(n, f)| match f {
        Field::Bytes(b) if *n == number => Some(*b),
        _ => None,
    })
}

fn text(fs: &[(u64, Field<'_>)], number: u64) -> Option<String> {
    bytes(fs, number).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// A TokenRequest body in the protobuf envelope, as JSON; None when it is not one.
pub fn token_request(body: &[u8]) -> Option<Value> {
    let envelope = fields(body.strip_prefix(MAGIC)?)?;
    let request = fields(bytes(&envelope, 2)?)?;
    let mut spec = json!({});
    if let Some(s) = bytes(&request, 2) {
        let s = fields(s)?;
        let audiences: Vec<String> = s
            .iter()
            .filter_map(|(n, f)| match f {
                Field::Bytes(b) if *n == 1 => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect();
        spec["audiences"] = json!(audiences);
        if let Some(seconds) = s.iter().rev().find_map(|(n, f)| match f {
            Field::Varint(v) if *n == 4 => Some(*v as i64),
            _ => None,
        }) {
            spec["expirationSeconds"] = json!(seconds);
        }
        if let Some(r) = bytes(&s, 3) {
            let r = fields(r)?;
            spec["boundObjectRef"] = json!({"kind": text(&r, 1), "apiVersion": text(&r, 2), "name": text(&r, 3), "uid": text(&r, 4)});
        }
    }
    Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}))
}

/// A SelfSubjectAccessReview (spec = 2: resourceAttributes = 1 {namespace = 1, verb = 2,
/// group = 3, version = 4, resource = 5, subresource = 6, name = 7}, nonResourceAttributes = 2
/// {path = 1, verb = 2}) or SelfSubjectRulesReview (spec = 2: namespace = 1) in the envelope, as
/// JSON; None when it is not one.
pub fn self_review(body: &[u8]) -> Option<Value> {
    let envelope = fields(body.strip_prefix(MAGIC)?)?;
    let type_meta = fields(bytes(&envelope, 1)?)?;
    let kind = text(&type_meta, 2).unwrap_or_default();
    let review = fields(bytes(&envelope, 2)?)?;
    let spec = fields(bytes(&review, 2).unwrap_or_default())?;
    let spec = match kind.as_str() {
        "SelfSubjectRulesReview" => json!({"namespace": text(&spec, 1).unwrap_or_default()}),
        _ => {
            let mut out = json!({});
            if let Some(r) = bytes(&spec, 1) {
                let r = fields(r)?;
                let keys = ["namespace", "verb", "group", "version", "resource", "subresource", "name"];
                let attrs: serde_json::Map<String, Value> = keys
                    .iter()
                    .zip(1..)
                    .map(|(k, n)| ((*k).to_owned(), json!(text(&r, n).unwrap_or_default())))
                    .collect();
                out["resourceAttributes"] = Value::Object(attrs);
            }
            if let Some(r) = bytes(&spec, 2) {
                let r = fields(r)?;
                out["nonResourceAttributes"] = json!({"path": text(&r, 1).unwrap_or_default(), "verb": text(&r, 2).unwrap_or_default()});
            }
            out
        }
    };
    Some(json!({"apiVersion": text(&type_meta, 1), "kind": kind, "spec": spec}))
}

fn string_map(fs: &[(u64, Field<'_>)], number: u64) -> Option<Value> {
    let mut map = serde_json::Map::new();
    for (n, f) in fs {
        if let Field::Bytes(entry) = f
            && *n == number
        {
            let e = fields(entry)?;
            map.insert(text(&e, 1).unwrap_or_default(), json!(text(&e, 2).unwrap_or_default()));
        }
    }
    Some(Value::Object(map))
}

/// The kind (`apiVersion`, `kind`) and metadata of an object in the protobuf envelope.
pub fn object_meta(body: &[u8]) -> Option<Value> {
    let envelope = fields(body.strip_prefix(MAGIC)?)?;
    let type_meta = fields(bytes(&envelope, 1)?)?;
    let object = fields(bytes(&envelope, 2)?)?;
    let meta = fields(bytes(&object, 1)?)?;
    let owners: Option<Vec<Value>> = meta
        .iter()
        .filter_map(|(n, f)| match f {
            Field::Bytes(b) if *n == 13 => Some(*b),
            _ => None,
        })
        .map(|b| {
            let r = fields(b)?;
            let controller = r.iter().rev().find_map(|(n, f)| match f {
                Field::Varint(v) if *n == 6 => Some(*v != 0),
                _ => None,
            });
            Some(json!({"apiVersion": text(&r, 5), "kind": text(&r, 1), "name": text(&r, 3), "uid": text(&r, 4), "controller": controller}))
        })
        .collect();
    Some(json!({
        "apiVersion": text(&type_meta, 1),
        "kind": text(&type_meta, 2),
        "metadata": {
            "name": text(&meta, 1),
            "namespace": text(&meta, 3),
            "labels": string_map(&meta, 11)?,
            "annotations": string_map(&meta, 12)?,
            "ownerReferences": owners?,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_create_token_reads_as_json() {
        // What `kubectl create token default --duration 20m` (1.33) sent.
        let sent = hex::decode(concat!(
            "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e52657175657374",
            "121d0a100a0012001a0022002a00320038004200120320b0091a040a0012001a002200"
        ))
        .unwrap();
        let r = token_request(&sent).unwrap();
        assert_eq!(r["spec"], json!({"audiences": [], "expirationSeconds": 1200}));
        // With audiences and a bound pod (field numbers of authentication/v1's generated.proto).
        let pod = [b"\x0a\x03Pod".as_slice(), b"\x1a\x03web", b"\x22\x02u1"].concat();
        let mut spec = b"\x0a\x05vault\x20\x90\x1c\x1a".to_vec();
        spec.push(pod.len() as u8);
        spec.extend(&pod);
        let mut raw = vec![0x12, spec.len() as u8];
        raw.extend(&spec);
        let mut body = b"k8s\0\x12".to_vec();
        body.push(raw.len() as u8);
        body.extend(&raw);
        let r = token_request(&body).unwrap();
        assert_eq!(r["spec"]["audiences"], json!(["vault"]));
        assert_eq!(r["spec"]["expirationSeconds"], 3600);
        assert_eq!(r["spec"]["boundObjectRef"]["name"], "web");
        assert_eq!(r["spec"]["boundObjectRef"]["uid"], "u1");
        assert!(token_request(b"{\"spec\": {}}").is_none());
        assert!(token_request(b"k8s\0\x12\x05ab").is_none(), "cut short");
    }

    /// A length-delimited field.
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2, bytes.len() as u8];
        out.extend(bytes);
        out
    }

    #[test]
    fn self_reviews_read_as_json() {
        let envelope = |kind: &str, review: Vec<u8>| {
            let type_meta = [field(1, b"authorization.k8s.io/v1"), field(2, kind.as_bytes())].concat();
            [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &review)].concat()
        };
        // `kubectl auth can-i list pods -n app`: spec = 2 { resourceAttributes = 1 }.
        let attrs = [field(1, b"app"), field(2, b"list"), field(5, b"pods"), field(6, b"log")].concat();
        let body = envelope("SelfSubjectAccessReview", field(2, &field(1, &attrs)));
        let r = self_review(&body).unwrap();
        assert_eq!(r["kind"], "SelfSubjectAccessReview");
        let a = &r["spec"]["resourceAttributes"];
        assert_eq!(
            (a["namespace"].as_str(), a["verb"].as_str(), a["resource"].as_str()),
            (Some("app"), Some("list"), Some("pods"))
        );
        assert_eq!((a["subresource"].as_str(), a["group"].as_str()), (Some("log"), Some("")));
        // `kubectl auth can-i get /metrics`: nonResourceAttributes = 2 {path = 1, verb = 2}.
        let body = envelope(
            "SelfSubjectAccessReview",
            field(2, &field(2, &[field(1, b"/metrics"), field(2, b"get")].concat())),
        );
        assert_eq!(
            self_review(&body).unwrap()["spec"]["nonResourceAttributes"],
            json!({"path": "/metrics", "verb": "get"})
        );
        // `kubectl auth can-i --list -n dev`: spec = 2 { namespace = 1 }.
        let body = envelope("SelfSubjectRulesReview", field(2, &field(1, b"dev")));
        assert_eq!(self_review(&body).unwrap()["spec"], json!({"namespace": "dev"}));
        assert!(self_review(b"{}").is_none());
    }

    #[test]
    fn the_metadata_of_a_job_kubectl_made_from_a_cron_job() {
        let entry = [field(1, b"cronjob.kubernetes.io/instantiate"), field(2, b"manual")].concat();
        let owner = [
            field(1, b"CronJob"),
            field(3, b"backup"),
            field(4, b"u1"),
            field(5, b"batch/v1"),
            vec![6 << 3, 1],
        ]
        .concat();
        let meta = [field(1, b"by-hand"), field(12, &entry), field(13, &owner)].concat();
        let job = [field(1, &meta), field(2, b"")].concat();
        let type_meta = [field(1, b"batch/v1"), field(2, b"Job")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &job)].concat();
        let m = object_meta(&body).unwrap();
        assert_eq!(m["kind"], "Job");
        assert_eq!(m["metadata"]["name"], "by-hand");
        assert_eq!(m["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual");
        assert_eq!(
            m["metadata"]["ownerReferences"][0],
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "name": "backup", "uid": "u1", "controller": true})
        );
    }
}
