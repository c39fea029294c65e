//! The IPVS generic-netlink family on the wire: commands, the service and destination
//! attributes, encoded and parsed to the kernel's layout (`include/uapi/linux/ip_vs.h`). Pure:
//! bytes in, bytes out; the socket lives in [`super::kernel`].

use std::net::Ipv4Addr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized, emit_u16, emit_u32, parse_u16,
    parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use crate::model::Protocol;

/// The family's name, resolved to its (dynamic) id through nlctrl.
pub const FAMILY_NAME: &str = "IPVS";
/// IPVS_GENL_VERSION.
pub const FAMILY_VERSION: u8 = 1;
const AF_INET: u16 = 2;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
/// IP_VS_CONN_F_MASQ: destination NAT, the only forwarding method a proxy needs.
pub const FWD_MASQ: u32 = 0;
/// IP_VS_SVC_F_PERSISTENT: a client sticks to its destination for the service's timeout.
pub const SVC_F_PERSISTENT: u32 = 0x1;

/// IPVS_CMD_*.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    /// The kernel's answer to GET_INFO.
    SetInfo,
    GetInfo,
    Flush,
    Other(u8),
}

impl From<Command> for u8 {
    fn from(c: Command) -> u8 {
        match c {
            Command::NewService => 1,
            Command::SetService => 2,
            Command::DelService => 3,
            Command::GetService => 4,
            Command::NewDest => 5,
            Command::SetDest => 6,
            Command::DelDest => 7,
            Command::GetDest => 8,
            Command::SetInfo => 14,
            Command::GetInfo => 15,
            Command::Flush => 17,
            Command::Other(n) => n,
        }
    }
}

impl From<u8> for Command {
    fn from(n: u8) -> Command {
        match n {
            1 => Command::NewService,
            2 => Command::SetService,
            3 => Command::DelService,
            4 => Command::GetService,
            5 => Command::NewDest,
            6 => Command::SetDest,
            7 => Command::DelDest,
            8 => Command::GetDest,
            14 => Command::SetInfo,
            15 => Command::GetInfo,
            17 => Command::Flush,
            n => Command::Other(n),
        }
    }
}

/// One IPVS message: a command and its top-level attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub cmd: Command,
    pub attrs: Vec<Attr>,
}

/// Top-level attributes (IPVS_CMD_ATTR_*, or IPVS_INFO_ATTR_* in the answer to GET_INFO, which
/// the kernel sends as SET_INFO and which reuses the numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    Service(Vec<ServiceAttr>),
    Dest(Vec<DestAttr>),
    /// IPVS_INFO_ATTR_VERSION, e.g. 0x010201 for 1.2.1.
    Version(u32),
    /// IPVS_INFO_ATTR_CONN_TAB_SIZE.
    ConnTabSize(u32),
    Other(DefaultNla),
}

/// IPVS_SVC_ATTR_*.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceAttr {
    Family(u16),
    Protocol(u16),
    /// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first four.
    Addr(Ipv4Addr),
    /// Big-endian on the wire.
    Port(u16),
    Fwmark(u32),
    Scheduler(String),
    /// `struct ip_vs_flags { flags, mask }`.
    Flags {
        flags: u32,
        mask: u32,
    },
    Timeout(u32),
    /// A prefix mask, big-endian on the wire (persistence granularity).
    Netmask(u32),
    PeName(String),
    Other(DefaultNla),
}

/// IPVS_DEST_ATTR_*.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    Addr(Ipv4Addr),
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UpperThreshold(u32),
    LowerThreshold(u32),
    ActiveConns(u32),
    InactiveConns(u32),
    PersistConns(u32),
    Family(u16),
    Other(DefaultNla),
}

impl GenlFamily for Message {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for Message {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Message {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Message, DecodeError> {
        let cmd = Command::from(header.cmd);
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            attrs.push(Attr::parse(&nla, cmd)?);
        }
        Ok(Message { cmd, attrs })
    }
}

fn emit_addr(buffer: &mut [u8], a: Ipv4Addr) {
    buffer[..16].fill(0);
    buffer[..4].copy_from_slice(&a.octets());
}

fn parse_addr(v: &[u8]) -> Result<Ipv4Addr, DecodeError> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| DecodeError::from("IPVS address shorter than 4 bytes"))?;
    Ok(Ipv4Addr::from(b))
}

fn parse_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn parse_be16(v: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_be(parse_u16(v)?))
}

fn parse_nested<T>(v: &[u8], one: impl Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>) -> Result<Vec<T>, DecodeError> {
    NlasIterator::new(v).map(|nla| one(&nla?)).collect()
}

impl Attr {
    fn parse(nla: &NlaBuffer<&[u8]>, cmd: Command) -> Result<Attr, DecodeError> {
        let v = nla.value();
        Ok(match (cmd, nla.kind()) {
            (Command::GetInfo | Command::SetInfo, 1) => Attr::Version(parse_u32(v)?),
            (Command::GetInfo | Command::SetInfo, 2) => Attr::ConnTabSize(parse_u32(v)?),
            (Command::GetInfo | Command::SetInfo, _) => Attr::Other(DefaultNla::parse(nla)?),
            (_, 1) => Attr::Service(parse_nested(v, ServiceAttr::parse)?),
            (_, 2) => Attr::Dest(parse_nested(v, DestAttr::parse)?),
            _ => Attr::Other(DefaultNla::parse(nla)?),
        })
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Service(a) => a.as_slice().buffer_len(),
            Attr::Dest(a) => a.as_slice().buffer_len(),
            Attr::Version(_) | Attr::ConnTabSize(_) => 4,
            Attr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Service(_) | Attr::Version(_) => 1,
            Attr::Dest(_) | Attr::ConnTabSize(_) => 2,
            Attr::Other(n) => n.kind(),
        }
    }

    // ipvsadm (libnl) marks nests with NLA_F_NESTED; the kernel accepts both and answers
    // without the flag. We send what ipvsadm sends.
    fn is_nested(&self) -> bool {
        matches!(self, Attr::Service(_) | Attr::Dest(_))
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Service(a) => a.as_slice().emit(buffer),
            Attr::Dest(a) => a.as_slice().emit(buffer),
            Attr::Version(n) | Attr::ConnTabSize(n) => emit_u32(buffer, *n).expect("4 bytes"),
            Attr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl ServiceAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<ServiceAttr, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            1 => ServiceAttr::Family(parse_u16(v)?),
            2 => ServiceAttr::Protocol(parse_u16(v)?),
            3 => ServiceAttr::Addr(parse_addr(v)?),
            4 => ServiceAttr::Port(parse_be16(v)?),
            5 => ServiceAttr::Fwmark(parse_u32(v)?),
            6 => ServiceAttr::Scheduler(parse_string(v)),
            7 => ServiceAttr::Flags {
                flags: parse_u32(v.get(..4).unwrap_or_default())?,
                mask: parse_u32(v.get(4..8).unwrap_or_default())?,
            },
            8 => ServiceAttr::Timeout(parse_u32(v)?),
            9 => ServiceAttr::Netmask(u32::from_be(parse_u32(v)?)),
            11 => ServiceAttr::PeName(parse_string(v)),
            _ => ServiceAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

impl Nla for ServiceAttr {
    fn value_len(&self) -> usize {
        match self {
            ServiceAttr::Family(_) | ServiceAttr::Protocol(_) | ServiceAttr::Port(_) => 2,
            ServiceAttr::Addr(_) => 16,
            ServiceAttr::Fwmark(_) | ServiceAttr::Timeout(_) | ServiceAttr::Netmask(_) => 4,
            ServiceAttr::Scheduler(s) | ServiceAttr::PeName(s) => s.len() + 1,
            ServiceAttr::Flags { .. } => 8,
            ServiceAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            ServiceAttr::Family(_) => 1,
            ServiceAttr::Protocol(_) => 2,
            ServiceAttr::Addr(_) => 3,
            ServiceAttr::Port(_) => 4,
            ServiceAttr::Fwmark(_) => 5,
            ServiceAttr::Scheduler(_) => 6,
            ServiceAttr::Flags { .. } => 7,
            ServiceAttr::Timeout(_) => 8,
            ServiceAttr::Netmask(_) => 9,
            ServiceAttr::PeName(_) => 11,
            ServiceAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, b: &mut [u8]) {
        match self {
            ServiceAttr::Family(n) | ServiceAttr::Protocol(n) => emit_u16(b, *n).expect("2 bytes"),
            ServiceAttr::Addr(a) => emit_addr(b, *a),
            ServiceAttr::Port(p) => b[..2].copy_from_slice(&p.to_be_bytes()),
            ServiceAttr::Fwmark(n) | ServiceAttr::Timeout(n) => emit_u32(b, *n).expect("4 bytes"),
            ServiceAttr::Netmask(m) => b[..4].copy_from_slice(&m.to_be_bytes()),
            ServiceAttr::Scheduler(s) | ServiceAttr::PeName(s) => {
                b[..s.len()].copy_from_slice(s.as_bytes());
                b[s.len()] = 0;
            }
            ServiceAttr::Flags { flags, mask } => {
                emit_u32(&mut b[..4], *flags).expect("4 bytes");
                emit_u32(&mut b[4..8], *mask).expect("4 bytes");
            }
            ServiceAttr::Other(n) => n.emit_value(b),
        }
    }
}

impl DestAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<DestAttr, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            1 => DestAttr::Addr(parse_addr(v)?),
            2 => DestAttr::Port(parse_be16(v)?),
            3 => DestAttr::FwdMethod(parse_u32(v)?),
            4 => DestAttr::Weight(parse_u32(v)?),
            5 => DestAttr::UpperThreshold(parse_u32(v)?),
            6 => DestAttr::LowerThreshold(parse_u32(v)?),
            7 => DestAttr::ActiveConns(parse_u32(v)?),
            8 => DestAttr::InactiveConns(parse_u32(v)?),
            9 => DestAttr::PersistConns(parse_u32(v)?),
            11 => DestAttr::Family(parse_u16(v)?),
            _ => DestAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_) | DestAttr::Family(_) => 2,
            DestAttr::Other(n) => n.value_len(),
            _ => 4,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => 1,
            DestAttr::Port(_) => 2,
            DestAttr::FwdMethod(_) => 3,
            DestAttr::Weight(_) => 4,
            DestAttr::UpperThreshold(_) => 5,
            DestAttr::LowerThreshold(_) => 6,
            DestAttr::ActiveConns(_) => 7,
            DestAttr::InactiveConns(_) => 8,
            DestAttr::PersistConns(_) => 9,
            DestAttr::Family(_) => 11,
            DestAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, b: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => emit_addr(b, *a),
            DestAttr::Port(p) => b[..2].copy_from_slice(&p.to_be_bytes()),
            DestAttr::Family(n) => emit_u16(b, *n).expect("2 bytes"),
            DestAttr::FwdMethod(n)
            | DestAttr::Weight(n)
            | DestAttr::UpperThreshold(n)
            | DestAttr::LowerThreshold(n)
            | DestAttr::ActiveConns(n)
            | DestAttr::InactiveConns(n)
            | DestAttr::PersistConns(n) => emit_u32(b, *n).expect("4 bytes"),
            DestAttr::Other(n) => n.emit_value(b),
        }
    }
}

/// A virtual service as the kernel keys and configures it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualServer {
    pub protocol: Protocol,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub scheduler: String,
    /// Persistence (ClientIP affinity) in seconds; 0: none.
    pub persistence: u32,
}

/// A real server behind a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
}

fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

impl VirtualServer {
    /// The attributes that name the service (enough for DEL_SERVICE and for the service part
    /// of a destination command).
    pub fn key_attrs(&self) -> Vec<ServiceAttr> {
        vec![
            ServiceAttr::Family(AF_INET),
            ServiceAttr::Protocol(protocol_number(self.protocol)),
            ServiceAttr::Addr(self.addr),
            ServiceAttr::Port(self.port),
        ]
    }

    /// The full entry NEW_SERVICE and SET_SERVICE need: the kernel refuses one without the
    /// scheduler, flags, timeout and netmask.
    pub fn full_attrs(&self) -> Vec<ServiceAttr> {
        let mut a = self.key_attrs();
        let flags = if self.persistence > 0 { SVC_F_PERSISTENT } else { 0 };
        a.extend([
            ServiceAttr::Scheduler(self.scheduler.clone()),
            ServiceAttr::Flags { flags, mask: u32::MAX },
            ServiceAttr::Timeout(self.persistence),
            ServiceAttr::Netmask(u32::MAX),
        ]);
        a
    }

    /// Reads a service out of a kernel answer; `None` for what a proxy does not make
    /// (fwmark services, IPv6, other protocols).
    pub fn from_attrs(attrs: &[ServiceAttr]) -> Option<VirtualServer> {
        let (mut family, mut protocol, mut addr, mut port) = (None, None, None, None);
        let (mut scheduler, mut flags, mut timeout) = (String::new(), 0, 0);
        for a in attrs {
            match a {
                ServiceAttr::Family(f) => family = Some(*f),
                ServiceAttr::Protocol(p) => protocol = Some(*p),
                ServiceAttr::Addr(x) => addr = Some(*x),
                ServiceAttr::Port(p) => port = Some(*p),
                ServiceAttr::Scheduler(s) => scheduler = s.clone(),
                ServiceAttr::Flags { flags: f, .. } => flags = *f,
                ServiceAttr::Timeout(t) => timeout = *t,
                _ => {}
            }
        }
        if family != Some(AF_INET) {
            return None;
        }
        let protocol = match protocol? {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        Some(VirtualServer {
            protocol,
            addr: addr?,
            port: port?,
            scheduler,
            persistence: if flags & SVC_F_PERSISTENT != 0 { timeout } else { 0 },
        })
    }
}

impl RealServer {
    pub fn key_attrs(&self) -> Vec<DestAttr> {
        vec![DestAttr::Family(AF_INET), DestAttr::Addr(self.addr), DestAttr::Port(self.port)]
    }

    /// What NEW_DEST and SET_DEST need: forwarding method, weight and both thresholds (in
    /// ipvsadm's order, without its tunnel attributes).
    pub fn full_attrs(&self) -> Vec<DestAttr> {
        let mut a = self.key_attrs();
        a.extend([
            DestAttr::FwdMethod(FWD_MASQ),
            DestAttr::Weight(self.weight),
            DestAttr::UpperThreshold(0),
            DestAttr::LowerThreshold(0),
        ]);
        a
    }

    pub fn from_attrs(attrs: &[DestAttr]) -> Option<RealServer> {
        let (mut addr, mut port, mut weight) = (None, None, 1);
        for a in attrs {
            match a {
                DestAttr::Addr(x) => addr = Some(*x),
                DestAttr::Port(p) => port = Some(*p),
                DestAttr::Weight(w) => weight = *w,
                DestAttr::Family(f) if *f != AF_INET => return None,
                _ => {}
            }
        }
        Some(RealServer {
            addr: addr?,
            port: port?,
            weight,
        })
    }
}

/// The requests the proxy sends.
impl Message {
    pub fn new_service(s: &VirtualServer) -> Message {
        Message {
            cmd: Command::NewService,
            attrs: vec![Attr::Service(s.full_attrs())],
        }
    }

    pub fn set_service(s: &VirtualServer) -> Message {
        Message {
            cmd: Command::SetService,
            attrs: vec![Attr::Service(s.full_attrs())],
        }
    }

    pub fn del_service(s: &VirtualServer) -> Message {
        Message {
            cmd: Command::DelService,
            attrs: vec![Attr::Service(s.key_attrs())],
        }
    }

    pub fn new_dest(s: &VirtualServer, d: &RealServer) -> Message {
        Message {
            cmd: Command::NewDest,
            attrs: vec![Attr::Service(s.key_attrs()), Attr::Dest(d.full_attrs())],
        }
    }

    pub fn set_dest(s: &VirtualServer, d: &RealServer) -> Message {
        Message {
            cmd: Command::SetDest,
            attrs: vec![Attr::Service(s.key_attrs()), Attr::Dest(d.full_attrs())],
        }
    }

    pub fn del_dest(s: &VirtualServer, d: &RealServer) -> Message {
        Message {
            cmd: Command::DelDest,
            attrs: vec![Attr::Service(s.key_attrs()), Attr::Dest(d.key_attrs())],
        }
    }

    /// A dump request for the destinations of `s`.
    pub fn get_dests(s: &VirtualServer) -> Message {
        Message {
            cmd: Command::GetDest,
            attrs: vec![Attr::Service(s.key_attrs())],
        }
    }

    pub fn bare(cmd: Command) -> Message {
        Message { cmd, attrs: Vec::new() }
    }

    pub fn service(&self) -> Option<&[ServiceAttr]> {
        self.attrs.iter().find_map(|a| match a {
            Attr::Service(s) => Some(s.as_slice()),
            _ => None,
        })
    }

    pub fn dest(&self) -> Option<&[DestAttr]> {
        self.attrs.iter().find_map(|a| match a {
            Attr::Dest(d) => Some(d.as_slice()),
            _ => None,
        })
    }
}

/// The payload of a generic-netlink message body (after the 4-byte genl header), for tests.
pub fn encode(m: &Message) -> Vec<u8> {
    let mut b = vec![0; m.buffer_len()];
    m.emit(&mut b);
    b
}

#[cfg(test)]
mod tests;
