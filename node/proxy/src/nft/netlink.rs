//! The IO edge for element transactions: an nfnetlink socket (in a named network namespace
//! when asked), kept open between transactions, that sends one encoded batch and reads the
//! kernel's verdict on it. Blocking: the kernel runs the whole transaction inside the `send`, so
//! the answers are there when it returns.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::elements::{Ack, Batch, parse_answers};
use crate::ProxyError;

fn socket_error(source: io::Error) -> ProxyError {
    ProxyError::NfTablesSocket(source)
}

/// A NETLINK_NETFILTER socket of the current namespace, or of `/run/netns/<netns>`.
fn open(netns: Option<&str>) -> Result<Socket, ProxyError> {
    let create = || -> io::Result<Socket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(socket)
    };
    let socket = match netns {
        None => create(),
        // A socket belongs to the namespace it was created in: create it on a thread that
        // entered the namespace, and keep using it from here.
        Some(ns) => {
            let path = format!("/run/netns/{ns}");
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path)?;
                rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
                create()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
        }
    }
    .map_err(socket_error)?;
    // Errors echo only the failed message's header, and carry the kernel's reason as text.
    socket.set_cap_ack(true).map_err(socket_error)?;
    let _ = socket.set_ext_ack(true);
    rustix::net::sockopt::set_socket_timeout(&socket, rustix::net::sockopt::Timeout::Recv, Some(Duration::from_secs(10)))
        .map_err(|e| socket_error(e.into()))?;
    Ok(socket)
}

/// The socket, opened on first use and kept: closing a socket that ran nf_tables transactions
/// costs the kernel 10–25 ms, more than the transaction of one endpoint change.
#[derive(Debug, Default)]
pub struct Channel {
    socket: Option<Socket>,
}

/// Sends `batch` as one transaction and returns when the kernel committed it; an error names
/// the message the kernel refused (the whole transaction is then undone by the kernel). After
/// an error the socket is dropped, so that no late answer is read as the next batch's.
pub fn apply(channel: &mut Channel, netns: Option<&str>, batch: &Batch) -> Result<(), ProxyError> {
    let socket = match &channel.socket {
        Some(s) => s,
        None => channel.socket.insert(open(netns)?),
    };
    let result = transact(socket, batch);
    if result.is_err() {
        channel.socket = None;
    }
    result
}

fn transact(socket: &Socket, batch: &Batch) -> Result<(), ProxyError> {
    // The kernel takes a batch only whole, in one message: make room for it (root may exceed
    // the default send buffer limit, as nft does for big sets).
    let want = batch.bytes.len() + 4096;
    if want > 200_000 {
        rustix::net::sockopt::set_socket_send_buffer_size_force(socket, want).map_err(|e| socket_error(e.into()))?;
    }
    let sent = socket.send(&batch.bytes, 0).map_err(socket_error)?;
    if sent != batch.bytes.len() {
        return Err(socket_error(io::Error::other(format!(
            "sent {sent} of {} bytes",
            batch.bytes.len()
        ))));
    }
    let mut refused = None;
    loop {
        let (data, _) = socket.recv_from_full().map_err(socket_error)?;
        for Ack { seq, errno, message } in parse_answers(&data) {
            // An answer to the batch itself (out of memory, a malformed batch): nothing follows.
            let outside = seq < batch.first_seq || seq > batch.last_seq();
            if errno != 0 && outside {
                return Err(ProxyError::NfTables {
                    what: "the batch".into(),
                    reason: io::Error::from_raw_os_error(errno).to_string(),
                });
            }
            if errno != 0 && refused.is_none() {
                let reason = io::Error::from_raw_os_error(errno).to_string();
                refused = Some(ProxyError::NfTables {
                    what: batch.describe(seq),
                    reason: match message {
                        Some(m) if !m.is_empty() => format!("{reason} ({m})"),
                        _ => reason,
                    },
                });
            }
            // Answers come in message order; the last message's is the last one.
            if seq == batch.last_seq() {
                return refused.map_or(Ok(()), Err);
            }
        }
    }
}
