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

/// How one field of a message reads into JSON (field numbers of core/v1's generated.proto).
enum Shape {
    Str,
    Bool,
    Int,
    Strs,
    StrMap,
    Msg(&'static [Spec]),
    Msgs(&'static [Spec]),
    /// An embedded message whose fields belong to the enclosing object (a Volume's source).
    Inline(&'static [Spec]),
}

/// One field: its number, its JSON name and its shape.
type Spec = (u64, &'static str, Shape);

use Shape::*;

const POD_SPEC: &[Spec] = &[
    (1, "volumes", Msgs(VOLUME)),
    (2, "containers", Msgs(CONTAINER)),
    (3, "restartPolicy", Str),
    (4, "terminationGracePeriodSeconds", Int),
    (5, "activeDeadlineSeconds", Int),
    (6, "dnsPolicy", Str),
    (7, "nodeSelector", StrMap),
    (8, "serviceAccountName", Str),
    (9, "serviceAccount", Str),
    (10, "nodeName", Str),
    (11, "hostNetwork", Bool),
    (12, "hostPID", Bool),
    (13, "hostIPC", Bool),
    (16, "hostname", Str),
    (17, "subdomain", Str),
    (19, "schedulerName", Str),
    (20, "initContainers", Msgs(CONTAINER)),
    (21, "automountServiceAccountToken", Bool),
    (22, "tolerations", Msgs(TOLERATION)),
    (24, "priorityClassName", Str),
    (30, "enableServiceLinks", Bool),
];
const CONTAINER: &[Spec] = &[
    (1, "name", Str),
    (2, "image", Str),
    (3, "command", Strs),
    (4, "args", Strs),
    (5, "workingDir", Str),
    (7, "env", Msgs(ENV)),
    (9, "volumeMounts", Msgs(MOUNT)),
    (13, "terminationMessagePath", Str),
    (14, "imagePullPolicy", Str),
    (15, "securityContext", Msg(SECURITY)),
    (16, "stdin", Bool),
    (17, "stdinOnce", Bool),
    (18, "tty", Bool),
    (20, "terminationMessagePolicy", Str),
];
const ENV: &[Spec] = &[(1, "name", Str), (2, "value", Str)];
const MOUNT: &[Spec] = &[
    (1, "name", Str),
    (2, "readOnly", Bool),
    (3, "mountPath", Str),
    (4, "subPath", Str),
    (5, "mountPropagation", Str),
];
const SECURITY: &[Spec] = &[
    (1, "capabilities", Msg(&[(1, "add", Strs), (2, "drop", Strs)])),
    (2, "privileged", Bool),
    (4, "runAsUser", Int),
    (8, "runAsGroup", Int),
    (5, "runAsNonRoot", Bool),
    (6, "readOnlyRootFilesystem", Bool),
    (7, "allowPrivilegeEscalation", Bool),
];
const VOLUME: &[Spec] = &[(1, "name", Str), (2, "", Inline(VOLUME_SOURCE))];
const VOLUME_SOURCE: &[Spec] = &[
    (1, "hostPath", Msg(&[(1, "path", Str), (2, "type", Str)])),
    (2, "emptyDir", Msg(&[(1, "medium", Str)])),
];
const TOLERATION: &[Spec] = &[
    (1, "key", Str),
    (2, "operator", Str),
    (3, "value", Str),
    (4, "effect", Str),
    (5, "tolerationSeconds", Int),
];

/// Whether a field carries nothing: Go's protobuf writes every non-pointer field, so an unset
/// string, number or struct arrives as an empty or zero field.
fn is_zero(f: &Field<'_>) -> bool {
    match f {
        Field::Varint(v) => *v == 0,
        Field::Bytes(b) => b.is_empty() || fields(b).is_some_and(|fs| fs.iter().all(|(_, f)| is_zero(f))),
    }
}

/// Reads a message by its table into `out`; a field the table does not know that carries
/// something is an error naming where it is.
fn read_message(buf: &[u8], specs: &[Spec], at: &str, out: &mut serde_json::Map<String, Value>) -> Result<(), String> {
    let fs = fields(buf).ok_or_else(|| format!("{at}: not a well-formed protobuf message"))?;
    for (n, f) in &fs {
        let Some((_, name, shape)) = specs.iter().find(|s| s.0 == *n) else {
            if is_zero(f) {
                continue;
            }
            return Err(format!("{at}: field {n} of the protobuf body is not one Capstan reads"));
        };
        let here = format!("{at}.{name}");
        let (value, repeated) = match (shape, f) {
            (Str, Field::Bytes([])) => continue,
            (Str | Strs, Field::Bytes(b)) => (json!(String::from_utf8_lossy(b)), matches!(shape, Strs)),
            (Bool, Field::Varint(v)) => (json!(*v != 0), false),
            (Int, Field::Varint(v)) => (json!(*v as i64), false),
            (StrMap, Field::Bytes(b)) => {
                let e = fields(b).ok_or_else(|| format!("{here}: not a well-formed map entry"))?;
                let entry = out.entry(name.to_owned()).or_insert_with(|| json!({}));
                entry[text(&e, 1).unwrap_or_default()] = json!(text(&e, 2).unwrap_or_default());
                continue;
            }
            (Inline(inner), Field::Bytes(b)) => {
                read_message(b, inner, at, out)?;
                continue;
            }
            (Msg(inner) | Msgs(inner), Field::Bytes(b)) => {
                let index = out.get(*name).and_then(Value::as_array).map_or(0, Vec::len);
                let place = if matches!(shape, Msgs(_)) {
                    format!("{here}[{index}]")
                } else {
                    here.clone()
                };
                let mut m = serde_json::Map::new();
                read_message(b, inner, &place, &mut m)?;
                (Value::Object(m), matches!(shape, Msgs(_)))
            }
            _ => return Err(format!("{here}: a protobuf field of the wrong wire type")),
        };
        if repeated {
            let list = out.entry(name.to_owned()).or_insert_with(|| json!([]));
            if let Some(items) = list.as_array_mut() {
                items.push(value);
            }
        } else {
            out.insert((*name).to_owned(), value);
        }
    }
    Ok(())
}

/// A Pod in the protobuf envelope as JSON: its metadata (as [`object_meta`] reads it) and the
/// fields of its spec that a pod made by a tool carries (`kubectl debug node/NAME`: containers
/// with their command, environment, mounts and security context, volumes of the node or empty
/// ones, host namespaces, the node it is bound to, tolerations). A field beyond those is refused
/// with where it is, rather than dropped.
pub fn pod(body: &[u8]) -> Result<Value, String> {
    let mut pod = object_meta(body).ok_or("not a Kubernetes protobuf object")?;
    let envelope = fields(body.strip_prefix(MAGIC).unwrap_or_default()).unwrap_or_default();
    let object = fields(bytes(&envelope, 2).unwrap_or_default()).unwrap_or_default();
    let mut spec = serde_json::Map::new();
    read_message(bytes(&object, 2).unwrap_or_default(), POD_SPEC, "spec", &mut spec)?;
    pod["spec"] = Value::Object(spec);
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_of_kubectl_debug_node_reads_as_json() {
        // What `kubectl debug node/vm --image=… --image-pull-policy=Never -i -- sh -c '…'` (1.33)
        // sent: every non-pointer field of the Go types is there, empty.
        let sent = hex::decode(concat!(
            "6b3873000a090a0276311203506f641284020a260a166e6f64652d64656275676765722d766d2d716c66386d",
            "12001a0022002a0032003800420012c4010a120a09686f73742d726f6f7412050a030a012f127a0a08646562",
            "7567676572121c6361707374616e2e6c6f63616c2f746573746170703a6c61746573741a0273681a022d631a",
            "117265616420676f3b20686f73746e616d652a0042004a180a09686f73742d726f6f7410001a052f686f7374",
            "220032006a0072054e65766572800101880100900100a2010446696c651a054e65766572320042004a005202",
            "766d5801600168018201008a01009a0100b2010e0a0012064578697374731a002200c201001a130a001a0022",
            "002a0032004a005a0072008801001a002200"
        ))
        .unwrap();
        let p = pod(&sent).unwrap();
        assert_eq!(p["metadata"]["name"], "node-debugger-vm-qlf8m");
        assert_eq!(
            p["spec"],
            json!({
                "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
                "containers": [{"name": "debugger", "image": "capstan.local/testapp:latest",
                                "command": ["sh", "-c", "read go; hostname"],
                                "volumeMounts": [{"name": "host-root", "readOnly": false, "mountPath": "/host"}],
                                "imagePullPolicy": "Never", "stdin": true, "stdinOnce": false, "tty": false,
                                "terminationMessagePolicy": "File"}],
                "restartPolicy": "Never", "nodeName": "vm", "hostNetwork": true, "hostPID": true, "hostIPC": true,
                "tolerations": [{"operator": "Exists"}],
            })
        );
        // A field Capstan does not read is refused with where it is, not dropped: a container's
        // `ports` (field 6) here.
        let port = b"\x32\x03\x10\x90\x03".as_slice();
        let container = [b"\x0a\x01a\x12\x01b".as_slice(), port].concat();
        let spec = [&[0x12, container.len() as u8][..], &container].concat();
        let object = [&[0x0a, 0x00, 0x12, spec.len() as u8][..], &spec].concat();
        let body = [MAGIC, b"\x0a\x09\x0a\x02v1\x12\x03Pod\x12", &[object.len() as u8], &object].concat();
        assert_eq!(
            pod(&body).unwrap_err(),
            "spec.containers[0]: field 6 of the protobuf body is not one Capstan reads"
        );
    }

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
