//! The IO edge of the IPVS backend: a blocking generic-netlink socket that resolves the IPVS
//! family, sends many requests in one write and matches each acknowledgement to its request,
//! and dumps what the kernel holds. Blocking on purpose: a batch is one `sendto` and a few
//! `recv`s, cheaper than a future per request; callers run it on a blocking thread.

use std::collections::BTreeMap;
use std::io;

use capstan_netlink::for_each_message;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::family::{FAMILY_NAME, Message, RealServer, VirtualServer};

/// Requests per write: well under the socket's receive buffer for their acknowledgements.
const BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("this kernel has no IPVS generic-netlink family (is the ip_vs module loaded?)")]
    NoFamily,
    #[error("IPVS refused {what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("unreadable netlink answer: {0}")]
    Decode(String),
}

/// One request and a description for errors.
#[derive(Clone, Debug)]
pub struct Request {
    pub message: Message,
    pub what: String,
}

/// A netlink socket talking to the IPVS family of the current network namespace.
#[derive(Debug)]
pub struct Ipvs {
    socket: Socket,
    family: u16,
    seq: u32,
    /// Messages sent since creation (for the benchmark's messages-per-change figure).
    pub sent: u64,
}

impl Ipvs {
    /// Opens a socket and resolves the family; [`KernelError::NoFamily`] where the kernel has no
    /// IPVS.
    pub fn open() -> Result<Ipvs, KernelError> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Room for the acknowledgements of a whole batch and for big dumps.
        let _ = socket.set_rx_buf_sz(4 << 20);
        let mut ipvs = Ipvs {
            socket,
            family: 0,
            seq: 0,
            sent: 0,
        };
        ipvs.family = ipvs.resolve()?;
        Ok(ipvs)
    }

    /// The family id the kernel gave IPVS (dynamic).
    pub fn family(&self) -> u16 {
        self.family
    }

    fn resolve(&mut self) -> Result<u16, KernelError> {
        let ctrl = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.into())],
        };
        let seq = self.next_seq();
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(ctrl));
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut family = None;
        let mut done = false;
        while !done {
            let data = self.recv()?;
            for_each_message::<GenlMessage<GenlCtrl>, KernelError>(&data, |header, payload| {
                match payload {
                    NetlinkPayload::InnerMessage(m) => {
                        for a in &m.payload.nlas {
                            if let GenlCtrlAttrs::FamilyId(id) = a {
                                family = Some(*id);
                            }
                        }
                    }
                    NetlinkPayload::Error(e) if header.sequence_number == seq => {
                        done = true;
                        if let Some(code) = e.code {
                            return Err(if code.get() == -libc::ENOENT {
                                KernelError::NoFamily
                            } else {
                                KernelError::Io(io::Error::from_raw_os_error(-code.get()))
                            });
                        }
                    }
                    NetlinkPayload::Done(_) => done = true,
                    _ => {}
                }
                Ok(())
            })?;
        }
        family.ok_or(KernelError::NoFamily)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn recv(&self) -> Result<Vec<u8>, KernelError> {
        Ok(self.socket.recv_from_full()?.0)
    }

    fn frame(&mut self, message: Message, flags: u16) -> (u32, Vec<u8>) {
        let seq = self.next_seq();
        let mut genl = GenlMessage::from_payload(message);
        genl.set_resolved_family_id(self.family);
        let mut msg = NetlinkMessage::from(genl);
        msg.header.flags = flags;
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        (seq, buf)
    }

    /// Sends `requests` (in batches, each batch one write) and waits for every
    /// acknowledgement. All are tried; the first refusal is returned.
    pub fn execute(&mut self, requests: &[Request]) -> Result<(), KernelError> {
        let mut first_error = None;
        for chunk in requests.chunks(BATCH) {
            let mut pending = BTreeMap::new();
            let mut buf = Vec::new();
            for (i, r) in chunk.iter().enumerate() {
                let (seq, bytes) = self.frame(r.message.clone(), NLM_F_REQUEST | NLM_F_ACK);
                buf.extend_from_slice(&bytes);
                pending.insert(seq, i);
            }
            self.socket.send(&buf, 0)?;
            self.sent += chunk.len() as u64;
            while !pending.is_empty() {
                let data = self.recv()?;
                for_each_message::<GenlMessage<Message>, KernelError>(&data, |header, payload| {
                    if let NetlinkPayload::Error(e) = payload
                        && let Some(i) = pending.remove(&header.sequence_number)
                        && let Some(code) = e.code
                        && first_error.is_none()
                    {
                        first_error = Some(KernelError::Refused {
                            what: chunk[i].what.clone(),
                            source: io::Error::from_raw_os_error(-code.get()),
                        });
                    }
                    Ok(())
                })?;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs one dump and returns the answers.
    fn dump(&mut self, request: Message) -> Result<Vec<Message>, KernelError> {
        self.transact(request, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// Sends one request and collects its answers until the kernel ends them (NLMSG_DONE after
    /// a dump, the acknowledgement after an NLM_F_ACK request).
    fn transact(&mut self, request: Message, flags: u16) -> Result<Vec<Message>, KernelError> {
        let (seq, bytes) = self.frame(request, flags);
        self.socket.send(&bytes, 0)?;
        self.sent += 1;
        let mut out = Vec::new();
        loop {
            let data = self.recv()?;
            let mut done = false;
            for_each_message::<GenlMessage<Message>, KernelError>(&data, |header, payload| {
                if header.sequence_number != seq {
                    return Ok(());
                }
                match payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m.payload),
                    NetlinkPayload::Done(_) => done = true,
                    NetlinkPayload::Error(e) => {
                        done = true;
                        if let Some(code) = e.code {
                            return Err(KernelError::Io(io::Error::from_raw_os_error(-code.get())));
                        }
                    }
                    _ => {}
                }
                Ok(())
            })?;
            if done {
                return Ok(out);
            }
        }
    }

    /// The raw bytes of a dump's answers (the kernel's own encoding, for tests).
    pub fn dump_raw(&mut self, request: Message) -> Result<Vec<Vec<u8>>, KernelError> {
        let (seq, bytes) = self.frame(request, NLM_F_REQUEST | NLM_F_DUMP);
        self.socket.send(&bytes, 0)?;
        let mut out = Vec::new();
        loop {
            let data = self.recv()?;
            let mut offset = 0;
            while offset + 16 <= data.len() {
                let len = u32::from_ne_bytes(data[offset..offset + 4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes(data[offset + 4..offset + 6].try_into().expect("2 bytes"));
                let s = u32::from_ne_bytes(data[offset + 8..offset + 12].try_into().expect("4 bytes"));
                if len < 16 || offset + len > data.len() {
                    return Err(KernelError::Decode("truncated netlink message".into()));
                }
                if s == seq {
                    if ty == 3 || ty == 2 {
                        return Ok(out); // NLMSG_DONE or NLMSG_ERROR
                    }
                    out.push(data[offset..offset + len].to_vec());
                }
                offset += len.next_multiple_of(4);
            }
        }
    }

    /// GET_INFO: the IPVS version (e.g. 0x010201) and the connection table size.
    pub fn info(&mut self) -> Result<(u32, u32), KernelError> {
        use super::family::{Attr, Command};
        let (mut version, mut size) = (0, 0);
        for m in self.transact(Message::bare(Command::GetInfo), NLM_F_REQUEST | NLM_F_ACK)? {
            for a in &m.attrs {
                match a {
                    Attr::Version(v) => version = *v,
                    Attr::ConnTabSize(s) => size = *s,
                    _ => {}
                }
            }
        }
        Ok((version, size))
    }

    /// Every IPv4 TCP/UDP virtual service with its real servers.
    pub fn list(&mut self) -> Result<BTreeMap<VirtualServer, Vec<RealServer>>, KernelError> {
        use super::family::Command;
        let mut out = BTreeMap::new();
        for m in self.dump(Message::bare(Command::GetService))? {
            if let Some(s) = m.service().and_then(VirtualServer::from_attrs) {
                out.insert(s, Vec::new());
            }
        }
        let services: Vec<VirtualServer> = out.keys().cloned().collect();
        for s in services {
            let dests = self
                .dump(Message::get_dests(&s))?
                .iter()
                .filter_map(|m| m.dest().and_then(RealServer::from_attrs))
                .collect::<Vec<_>>();
            out.insert(s, dests);
        }
        Ok(out)
    }
}

impl From<capstan_netlink::Undecodable> for KernelError {
    fn from(e: capstan_netlink::Undecodable) -> KernelError {
        KernelError::Decode(e.0)
    }
}
