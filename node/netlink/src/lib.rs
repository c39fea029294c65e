//! Netlink for the node agent and its proxy: [`rtnl`] speaks route netlink (the proxy's
//! service-address interface, the pod network's interfaces), and [`for_each_message`] walks the
//! messages of one datagram for any netlink family (the proxy's IPVS family uses it too).

pub mod rtnl;

use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload};

/// A datagram that does not decode as the family's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable(pub String);

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "undecodable netlink message: {}", self.0)
    }
}

impl std::error::Error for Undecodable {}

impl From<Undecodable> for std::io::Error {
    fn from(e: Undecodable) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// Walks the netlink messages of one datagram.
pub fn for_each_message<T, E>(data: &[u8], mut f: impl FnMut(&NetlinkHeader, NetlinkPayload<T>) -> Result<(), E>) -> Result<(), E>
where
    T: NetlinkDeserializable + std::fmt::Debug,
    T::Error: std::fmt::Display,
    E: From<Undecodable>,
{
    let mut offset = 0;
    while offset < data.len() {
        let msg = NetlinkMessage::<T>::deserialize(&data[offset..]).map_err(|e| Undecodable(e.to_string()))?;
        let len = msg.header.length as usize;
        if len == 0 {
            break;
        }
        let (header, payload) = msg.into_parts();
        f(&header, payload)?;
        offset += len.next_multiple_of(4);
    }
    Ok(())
}
