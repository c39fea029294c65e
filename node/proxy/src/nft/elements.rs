//! The elements of the proxy's nftables maps and sets, typed, and their encoding as one
//! nf_tables transaction (an nfnetlink batch of NEWSETELEM/DELSETELEM messages). Pure: the
//! socket is in [`super::netlink`].
//!
//! Element bytes follow the kernel's register layout for concatenations: each field starts a
//! 4-byte word, network-order fields left-aligned and zero-padded, `numgen` in host order.

use std::fmt;
use std::net::Ipv4Addr;

use crate::model::{Backend, Protocol};

/// `ip . proto . port` of a ClusterIP service port.
pub type ClusterKey = (Ipv4Addr, Protocol, u16);
/// `proto . port` of a node port.
pub type PortKey = (Protocol, u16);

pub const SERVICE_IPS: &str = "service-ips";
pub const NODE_PORTS: &str = "node-ports";
pub const ENDPOINTS_TCP: &str = "endpoints-tcp";
pub const ENDPOINTS_UDP: &str = "endpoints-udp";
pub const NODE_PORT_ENDPOINTS_TCP: &str = "node-port-endpoints-tcp";
pub const NODE_PORT_ENDPOINTS_UDP: &str = "node-port-endpoints-udp";
pub const NO_ENDPOINT_NODE_PORTS: &str = "no-endpoint-node-ports";
pub const HAIRPIN: &str = "hairpin";

/// Every map and set the table holds whatever the services (affinity sets come and go).
pub const FIXED_SETS: [&str; 8] = [
    SERVICE_IPS,
    NODE_PORTS,
    ENDPOINTS_TCP,
    ENDPOINTS_UDP,
    NODE_PORT_ENDPOINTS_TCP,
    NODE_PORT_ENDPOINTS_UDP,
    NO_ENDPOINT_NODE_PORTS,
    HAIRPIN,
];

/// The data map of a protocol's ClusterIP endpoints (one per protocol: nft 1.0.6 mistypes a map
/// whose key mixes `th dport` with `ip daddr`).
pub fn endpoints_map(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => ENDPOINTS_TCP,
        Protocol::Udp => ENDPOINTS_UDP,
    }
}

/// The data map of a protocol's node-port endpoints.
pub fn node_port_endpoints_map(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => NODE_PORT_ENDPOINTS_TCP,
        Protocol::Udp => NODE_PORT_ENDPOINTS_UDP,
    }
}

/// One element of one of the fixed maps and sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `service-ips`: a ClusterIP port → `goto` its chain.
    ServiceIp(ClusterKey, String),
    /// `node-ports`: a node port → `goto` its chain.
    NodePort(PortKey, String),
    /// `endpoints-<proto>`: a ClusterIP port and a slot (what `numgen … mod n` picked) → an
    /// endpoint.
    Endpoint(ClusterKey, u32, Backend),
    /// `node-port-endpoints-<proto>`: the same for a node port.
    NodePortEndpoint(PortKey, u32, Backend),
    /// `no-endpoint-node-ports`: a node port whose service has no ready endpoint.
    NoEndpointNodePort(PortKey),
    /// `hairpin`: `ip . ip` of an endpoint, masqueraded when DNAT'ed back to itself.
    Hairpin(Ipv4Addr),
}

/// What an element maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Value(Vec<u8>),
    Goto(String),
}

fn ip(out: &mut Vec<u8>, a: Ipv4Addr) {
    out.extend_from_slice(&a.octets());
}

fn proto(out: &mut Vec<u8>, p: Protocol) {
    let number = match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    };
    out.extend_from_slice(&[number, 0, 0, 0]);
}

fn port(out: &mut Vec<u8>, p: u16) {
    out.extend_from_slice(&p.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

fn backend(b: Backend) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    ip(&mut out, b.0);
    port(&mut out, b.1);
    out
}

impl Entry {
    /// The map or set the element belongs to.
    pub fn set(&self) -> &'static str {
        match self {
            Entry::ServiceIp(..) => SERVICE_IPS,
            Entry::NodePort(..) => NODE_PORTS,
            Entry::Endpoint((_, p, _), ..) => endpoints_map(*p),
            Entry::NodePortEndpoint((p, _), ..) => node_port_endpoints_map(*p),
            Entry::NoEndpointNodePort(_) => NO_ENDPOINT_NODE_PORTS,
            Entry::Hairpin(_) => HAIRPIN,
        }
    }

    pub fn key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match self {
            Entry::ServiceIp((a, p, n), _) => {
                ip(&mut out, *a);
                proto(&mut out, *p);
                port(&mut out, *n);
            }
            // The protocol is in the map's name.
            Entry::Endpoint((a, _, n), slot, _) => {
                ip(&mut out, *a);
                port(&mut out, *n);
                out.extend_from_slice(&slot.to_ne_bytes());
            }
            Entry::NodePort((p, n), _) | Entry::NoEndpointNodePort((p, n)) => {
                proto(&mut out, *p);
                port(&mut out, *n);
            }
            Entry::NodePortEndpoint((_, n), slot, _) => {
                port(&mut out, *n);
                out.extend_from_slice(&slot.to_ne_bytes());
            }
            Entry::Hairpin(a) => {
                ip(&mut out, *a);
                ip(&mut out, *a);
            }
        }
        out
    }

    pub fn data(&self) -> Option<Data> {
        match self {
            Entry::ServiceIp(_, chain) | Entry::NodePort(_, chain) => Some(Data::Goto(chain.clone())),
            Entry::Endpoint(_, _, b) | Entry::NodePortEndpoint(_, _, b) => Some(Data::Value(backend(*b))),
            Entry::NoEndpointNodePort(_) | Entry::Hairpin(_) => None,
        }
    }
}

/// As `nft` writes the element, for errors and logs.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::ServiceIp((a, p, n), chain) => write!(f, "{a} . {p} . {n} : goto {chain}"),
            Entry::NodePort((p, n), chain) => write!(f, "{p} . {n} : goto {chain}"),
            Entry::Endpoint((a, _, n), slot, (b, bp)) => write!(f, "{a} . {n} . {slot} : {b} . {bp}"),
            Entry::NodePortEndpoint((_, n), slot, (b, bp)) => write!(f, "{n} . {slot} : {b} . {bp}"),
            Entry::NoEndpointNodePort((p, n)) => write!(f, "{p} . {n}"),
            Entry::Hairpin(a) => write!(f, "{a} . {a}"),
        }
    }
}

/// One step of an element transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElementOp {
    /// Empties a map or set.
    Flush(&'static str),
    Delete(Entry),
    Add(Entry),
}

impl ElementOp {
    fn set(&self) -> &'static str {
        match self {
            ElementOp::Flush(set) => set,
            ElementOp::Delete(e) | ElementOp::Add(e) => e.set(),
        }
    }
}

impl fmt::Display for ElementOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElementOp::Flush(set) => write!(f, "flush {set}"),
            ElementOp::Delete(e) => write!(f, "delete element {} {{ {e} }}", e.set()),
            ElementOp::Add(e) => write!(f, "add element {} {{ {e} }}", e.set()),
        }
    }
}

// nfnetlink and nf_tables constants (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_GOTO: i32 = -4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_HDRLEN: usize = 16;

/// An attribute's length field is 16 bits: a message's element list stays well under it.
const MAX_ELEMENTS_BYTES: usize = 60_000;

/// A netlink message under construction: attributes appended, nests closed by position.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // struct nfgenmsg: family, version, resource id (big-endian).
        buf.extend_from_slice(&[family, 0]);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg { buf }
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn string(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Opens a nest; returns where its header is, for [`Msg::end`].
    fn begin(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self, out: &mut Vec<u8>) {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&self.buf);
    }
}

/// An nf_tables message type: the subsystem in the high byte.
fn nft_type(kind: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | kind
}

fn element(m: &mut Msg, e: &Entry, with_data: bool) {
    let el = m.begin(NFTA_LIST_ELEM);
    let key = m.begin(NFTA_SET_ELEM_KEY);
    m.attr(NFTA_DATA_VALUE, &e.key());
    m.end(key);
    if let (true, Some(data)) = (with_data, e.data()) {
        let d = m.begin(NFTA_SET_ELEM_DATA);
        match data {
            Data::Value(bytes) => m.attr(NFTA_DATA_VALUE, &bytes),
            Data::Goto(chain) => {
                let v = m.begin(NFTA_DATA_VERDICT);
                m.attr(NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
                m.string(NFTA_VERDICT_CHAIN, &chain);
                m.end(v);
            }
        }
        m.end(d);
    }
    m.end(el);
}

/// One encoded transaction: the bytes for one `send`, and what each message did (by sequence
/// number, from `first_seq`) so that an error names it.
#[derive(Debug)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub first_seq: u32,
    /// Per message: `flush|add|delete <set>` and its first element.
    pub messages: Vec<String>,
}

impl Batch {
    /// The sequence number of the last message, the one that asks for an acknowledgement.
    pub fn last_seq(&self) -> u32 {
        self.first_seq + self.messages.len() as u32 - 1
    }

    /// What message `seq` did, for an error.
    pub fn describe(&self, seq: u32) -> String {
        seq.checked_sub(self.first_seq)
            .and_then(|i| self.messages.get(i as usize))
            .cloned()
            .unwrap_or_else(|| format!("message {seq} of the batch"))
    }
}

/// Encodes `ops` for table `table` (family ip) as one batch: consecutive operations of the same
/// kind on the same set share a message. The last message asks for an acknowledgement; errors
/// come back anyway. `None` when there is nothing to do.
pub fn encode(table: &str, ops: &[ElementOp], first_seq: u32) -> Option<Batch> {
    if ops.is_empty() {
        return None;
    }
    let family = libc::AF_INET as u8;
    // Messages in order, each with what it does; sequence numbers are given at the end.
    let mut bodies: Vec<(Msg, String)> = Vec::new();
    // The message being filled: its kind, set, and where its element list starts.
    let mut open: Option<(u16, &'static str, Msg, usize, String)> = None;
    let close = |open: &mut Option<(u16, &'static str, Msg, usize, String)>, bodies: &mut Vec<(Msg, String)>| {
        if let Some((_, _, mut m, list, what)) = open.take() {
            m.end(list);
            bodies.push((m, what));
        }
    };
    for op in ops {
        let (kind, entry) = match op {
            ElementOp::Flush(_) => (NFT_MSG_DELSETELEM, None),
            ElementOp::Delete(e) => (NFT_MSG_DELSETELEM, Some(e)),
            ElementOp::Add(e) => (NFT_MSG_NEWSETELEM, Some(e)),
        };
        let same = matches!(&open, Some((k, set, m, _, _)) if *k == kind && *set == op.set() && entry.is_some() && m.buf.len() < MAX_ELEMENTS_BYTES);
        if !same {
            close(&mut open, &mut bodies);
        }
        let Some(entry) = entry else {
            // A DELSETELEM without an element list flushes the set.
            let mut m = Msg::new(nft_type(kind), NLM_F_REQUEST, 0, family, 0);
            m.string(NFTA_SET_ELEM_LIST_TABLE, table);
            m.string(NFTA_SET_ELEM_LIST_SET, op.set());
            bodies.push((m, op.to_string()));
            continue;
        };
        let (_, _, m, _, _) = open.get_or_insert_with(|| {
            let flags = if kind == NFT_MSG_NEWSETELEM {
                NLM_F_REQUEST | NLM_F_CREATE
            } else {
                NLM_F_REQUEST
            };
            let mut m = Msg::new(nft_type(kind), flags, 0, family, 0);
            m.string(NFTA_SET_ELEM_LIST_TABLE, table);
            m.string(NFTA_SET_ELEM_LIST_SET, op.set());
            let list = m.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
            (kind, op.set(), m, list, op.to_string())
        });
        element(m, entry, kind == NFT_MSG_NEWSETELEM);
    }
    close(&mut open, &mut bodies);
    let mut bytes = Vec::new();
    Msg::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first_seq.wrapping_sub(1),
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish(&mut bytes);
    let n = bodies.len();
    let mut messages = Vec::with_capacity(n);
    for (seq, (mut m, what)) in (first_seq..).zip(bodies) {
        m.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        if seq + 1 == first_seq + n as u32 {
            let flags = u16::from_ne_bytes([m.buf[6], m.buf[7]]) | NLM_F_ACK;
            m.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        }
        m.finish(&mut bytes);
        messages.push(what);
    }
    Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, first_seq + n as u32, 0, NFNL_SUBSYS_NFTABLES).finish(&mut bytes);
    Some(Batch {
        bytes,
        first_seq,
        messages,
    })
}

/// The kernel's answer to one message of a batch: `errno` 0 is success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub seq: u32,
    pub errno: i32,
    pub message: Option<String>,
}

const NLMSG_ERROR: u16 = 2;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The acknowledgements and errors in a read (anything else is skipped). The socket asks for capped acknowledgements (only the header of
/// the failed message echoed) and extended ones (the kernel's reason as text).
pub fn parse_answers(data: &[u8]) -> Vec<Ack> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind), Some(flags)) = (u32_at(data, at), u16_at(data, at + 4), u16_at(data, at + 6)) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > data.len() {
            break;
        }
        let msg = &data[at..at + len];
        if kind == NLMSG_ERROR {
            let errno = u32_at(msg, NLMSG_HDRLEN).map(|e| -(e as i32)).unwrap_or(0);
            let seq = u32_at(msg, NLMSG_HDRLEN + 4 + 8).unwrap_or(0);
            let mut message = None;
            if flags & NLM_F_ACK_TLVS != 0 {
                // After the error code and the echoed header: attributes.
                let mut a = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN;
                while let (Some(alen), Some(akind)) = (u16_at(msg, a), u16_at(msg, a + 2)) {
                    let alen = alen as usize;
                    if alen < 4 || a + alen > msg.len() {
                        break;
                    }
                    if akind & !NLA_F_NESTED == NLMSGERR_ATTR_MSG {
                        let text = &msg[a + 4..a + alen];
                        message = Some(String::from_utf8_lossy(text).trim_end_matches('\0').to_owned());
                    }
                    a += alen.next_multiple_of(4);
                }
            }
            out.push(Ack { seq, errno, message });
        }
        at += len.next_multiple_of(4);
    }
    out
}
