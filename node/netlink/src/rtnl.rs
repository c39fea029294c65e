//! Route netlink (links, addresses, routes) over a blocking socket, in this network namespace or
//! in another one: the proxy's service-address interface and the node agent's pod interfaces.
//! Blocking on purpose: a change is one request and one answer; callers run it off the runtime.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::for_each_message;

/// A route netlink socket and its request counter.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    /// A socket of this thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// A socket of the network namespace at `netns` (`/proc/<pid>/ns/net`, `/run/netns/<name>`).
    /// A socket belongs to the namespace it was made in: it is made on a short-lived thread that
    /// entered the namespace, and used from here.
    pub fn open_in(netns: &Path) -> io::Result<Rtnl> {
        let file = std::fs::File::open(netns)?;
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
            Rtnl::open()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    }

    /// The index of interface `name`, if there is one.
    pub fn index_of(&mut self, name: &str) -> io::Result<Option<u32>> {
        let mut get = LinkMessage::default();
        get.attributes = vec![LinkAttribute::IfName(name.into())];
        match self.request(RouteNetlinkMessage::GetLink(get), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One request; its answers (for gets and dumps) or an error with the kernel's errno.
    pub fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = NetlinkMessage::from(message);
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut done = None;
            for_each_message::<RouteNetlinkMessage, io::Error>(&data, |header, payload| {
                if header.sequence_number != seq {
                    return Ok(());
                }
                match payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Done(_) => done = Some(Ok(())),
                    NetlinkPayload::Error(e) => {
                        done = Some(match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(()),
                        })
                    }
                    _ => {}
                }
                Ok(())
            })?;
            if let Some(r) = done {
                return r.map(|()| out);
            }
        }
    }
}
