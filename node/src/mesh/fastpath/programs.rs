//! The fast path's two tc programs, assembled here (pure: instructions from map descriptors and
//! this node's constants), and the layout of the maps they share with the agent.
//!
//! `egress` runs where a pod's packets enter the host (the host end of its veth): a TCP segment
//! to another node's pod, of a connection both hosts have confirmed, goes straight out of the
//! underlay to the remote node, its MAC found by the kernel (`bpf_redirect_neigh`) — with VXLAN
//! encapsulated here first, as the VXLAN device would (the pod network's VNI and port, addressed
//! to the remote VTEP's MAC), so that neither the device nor the outer packet's netfilter hooks
//! are passed on the way out. `ingress` runs where such segments arrive (the VXLAN device, which
//! decapsulates them, or with host-gw the underlay): a segment for a local pod, of such a
//! connection, goes straight into the pod's namespace (`bpf_redirect_peer`).
//! Everything else — other protocols, Service addresses, connections not confirmed — takes the
//! kernel's own path, untouched.
//!
//! Connection tracking stays in charge of every connection's state: the handshake, the first
//! segment each way, a segment every [`REFRESH_NS`] and the FIN and RST segments all take the
//! kernel's path, so each host's conntrack holds an established entry (for the Services' NAT
//! and its port-clash checks) and sees the close. A connection is confirmed only when the remote
//! side's handshake segment acknowledges the local side's initial sequence number: a reply to a
//! connection this host translated (a Service's DNAT: the client addressed the Service, not
//! the pod) never has a record here, and a stale record of an earlier connection with the same
//! addresses and ports is not confirmed by a new one's handshake.

use std::net::Ipv4Addr;

use capstan_bpf::insn::{Asm, AsmError, Cond, FP, Insn, Op, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, Size};

use crate::mesh::kernel::{PORT, VNI};
use crate::mesh::plan::Mac;

/// Helpers (`enum bpf_func_id`).
const MAP_LOOKUP: i32 = 1;
const MAP_UPDATE: i32 = 2;
const MAP_DELETE: i32 = 3;
const KTIME_GET_NS: i32 = 5;
const GET_PRANDOM_U32: i32 = 7;
const SKB_STORE_BYTES: i32 = 9;
const GET_HASH_RECALC: i32 = 34;
const SKB_ADJUST_ROOM: i32 = 50;
const REDIRECT_NEIGH: i32 = 152;
const REDIRECT_PEER: i32 = 155;
const AF_INET: i32 = 2;

/// `struct __sk_buff` fields.
const SKB_LEN: i16 = 0;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

/// Offsets in an untagged Ethernet frame carrying IPv4 without options and TCP.
const ETH_SOURCE: i16 = 6;
const ETH_TYPE: i16 = 12;
const IP_VERSION_IHL: i16 = 14;
const IP_FRAGMENT: i16 = 20;
const IP_PROTOCOL: i16 = 23;
const IP_SOURCE: i16 = 26;
const IP_DESTINATION: i16 = 30;
const TCP_SOURCE_PORT: i16 = 34;
const TCP_DESTINATION_PORT: i16 = 36;
const TCP_SEQ: i16 = 38;
const TCP_ACK: i16 = 42;
const TCP_FLAGS: i16 = 47;
/// Through the TCP header's fixed part.
const HEADERS: i32 = 54;

const FIN: i32 = 0x01;
const SYN: i32 = 0x02;
const RST: i32 = 0x04;
const ACK: i32 = 0x10;

/// The return code that lets the kernel go on with the packet (`TC_ACT_OK`).
pub const PASS: u32 = 0;
/// The return code that drops it (`TC_ACT_SHOT`).
const DROP: i32 = 2;
/// The return code of a redirect (`TC_ACT_REDIRECT`).
pub const REDIRECTED: u32 = 7;

/// How often a fast connection's segment takes the kernel's path anyway, in each direction, so
/// that conntrack's entry stays (its established timeout is days) or comes back if flushed.
pub const REFRESH_NS: u64 = 60_000_000_000;

/// The remote nodes' pod ranges: longest-prefix-match key (prefix length in host order, the
/// address's bytes) → with VXLAN the remote VTEP's MAC (bytes 0..6), and the remote node's
/// address (bytes 8..12).
pub const REMOTE_KEY: usize = 8;
pub const REMOTE_VALUE: usize = 12;
pub const REMOTE_MAC: usize = 0;
pub const REMOTE_ADDRESS: usize = 8;
/// The local pods the fast path delivers to: address bytes → host-end interface index (host
/// order), the pod's MAC (padded to 12).
pub const POD_KEY: usize = 4;
pub const POD_VALUE: usize = 12;
pub const POD_INDEX: usize = 0;
pub const POD_MAC: usize = 4;
/// Connections, keyed from this host's side: local pod address, remote address, local port,
/// remote port (as on the wire) → the local side's initial sequence number (host order), whether
/// the remote side confirmed it (u32), and when a segment last took the kernel's path outwards
/// and inwards (ns, u64 each).
pub const FLOW_KEY: usize = 12;
pub const FLOW_VALUE: usize = 24;
const FLOW_ISN: i16 = 0;
const FLOW_CONFIRMED: i16 = 4;
const FLOW_EGRESS_AT: i16 = 8;
const FLOW_INGRESS_AT: i16 = 16;

/// Stack slots.
const STACK_LOOKUP_KEY: i16 = -8;
const STACK_FLOW_KEY: i16 = -24;
const STACK_FLOW_VALUE: i16 = -48;
/// `struct bpf_redir_neigh`: address family, IPv4 next hop, the IPv6 rest (20 bytes).
const STACK_NEXT_HOP: i16 = -72;
/// The headers VXLAN puts before a frame, built here and copied in ([`ENCAPSULATION`] bytes).
const STACK_HEADERS: i16 = -128;

/// What VXLAN adds: outer IPv4 (20), UDP (8), VXLAN (8), the inner frame's Ethernet header (14);
/// the outer Ethernet header is the frame's own, its MACs filled in by the neighbour table.
const ENCAPSULATION: usize = 50;
/// Offsets in the headers VXLAN adds.
const OUTER_LENGTH: i16 = 2;
const OUTER_ID: i16 = 4;
const OUTER_CHECKSUM: i16 = 10;
const OUTER_DESTINATION: i16 = 16;
const UDP_SOURCE_PORT: i16 = 20;
const UDP_LENGTH: i16 = 24;
const INNER_DESTINATION_MAC: i16 = 36;
/// `bpf_skb_adjust_room`: room after the MAC header, for an IPv4/UDP tunnel carrying Ethernet
/// (`BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | _ENCAP_L4_UDP | _ENCAP_L2_ETH`, the inner MAC header's
/// length in the top byte), keeping the segment size (`_FIXED_GSO`: the pods' MTU already
/// leaves room for the encapsulation).
const ADJUST_ROOM_MAC: i32 = 1;
const ADJUST_ROOM_FLAGS: u64 = (14 << 56) | (1 << 6) | (1 << 4) | (1 << 1) | 1;

/// The map descriptors the programs name.
#[derive(Clone, Copy, Debug)]
pub struct MapFds {
    pub remotes: i32,
    pub pods: i32,
    pub flows: i32,
}

/// The device fast segments arrive by (the VXLAN device, or with host-gw the underlay); with
/// VXLAN its MAC is the inner source of what the egress program encapsulates.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    pub index: u32,
    /// The source MAC of what the programs send on.
    pub mac: Mac,
}

/// How a fast segment reaches the remote node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Encapsulated in VXLAN from `local` (this node's underlay address) to the remote VTEP's
    /// MAC at the remote node's address, out of the `underlay` interface.
    Tunnel { underlay: u32, local: Ipv4Addr },
    /// Out of the underlay, to the remote node's address through the neighbour table.
    Neighbour,
}

/// A MAC's first four bytes and last two, as the little-endian immediates of two stores.
fn mac_words(mac: &Mac) -> (i32, i32) {
    (
        i32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
        i32::from(u16::from_le_bytes([mac[4], mac[5]])),
    )
}

/// r2 = the packet's start, r3 its end; to `pass` unless `len` bytes are there (r6 = context).
fn packet(a: &mut Asm, len: i32) {
    a.load(Size::W, R2, R6, SKB_DATA)
        .load(Size::W, R3, R6, SKB_DATA_END)
        .alu(Op::Mov, R4, R2)
        .alu_imm(Op::Add, R4, len)
        .jump(Cond::Gt, R4, R3, "pass");
}

/// The start both programs share: keeps the context in r6, and goes to `pass` unless the packet
/// is IPv4 without options, TCP, and not a fragment. Leaves r2 at the packet's start.
fn tcp_over_ipv4(a: &mut Asm) {
    a.alu(Op::Mov, R6, R1);
    packet(a, HEADERS);
    a.load(Size::H, R4, R2, ETH_TYPE)
        .jump_imm(Cond::Ne, R4, 0x0008, "pass") // 0x0800 as read on a little-endian machine
        .load(Size::B, R4, R2, IP_VERSION_IHL)
        .jump_imm(Cond::Ne, R4, 0x45, "pass")
        .load(Size::B, R4, R2, IP_PROTOCOL)
        .jump_imm(Cond::Ne, R4, 6, "pass")
        .load(Size::H, R4, R2, IP_FRAGMENT)
        .alu_imm(Op::And, R4, 0xff3f) // more-fragments and the offset, as read
        .jump_imm(Cond::Ne, R4, 0, "pass");
}

/// Addresses the frame to the pod whose map value is in r7, from `source`. Reloads the packet
/// pointers (a helper call dropped them).
fn to_pod(a: &mut Asm, source: &Mac) {
    let at = POD_MAC as i16;
    packet(a, 14);
    let (head, tail) = mac_words(source);
    a.load(Size::W, R4, R7, at)
        .store(Size::W, R2, 0, R4)
        .load(Size::H, R4, R7, at + 4)
        .store(Size::H, R2, 4, R4)
        .store_imm(Size::W, R2, ETH_SOURCE, head)
        .store_imm(Size::H, R2, ETH_SOURCE + 4, tail);
}

/// The constant part of the headers VXLAN adds, from this node's underlay address `local` and
/// VTEP MAC `source`: the length, identification, checksum, remote address, source port and
/// inner destination MAC are left zero. Fragments allowed, as the VXLAN device sends by
/// default (a routed path with a smaller MTU fragments rather than drops).
fn vxlan_headers(local: Ipv4Addr, source: &Mac) -> [u8; ENCAPSULATION] {
    let mut h = [0u8; ENCAPSULATION];
    h[0] = 0x45;
    h[8] = 64;
    h[9] = 17;
    h[12..16].copy_from_slice(&local.octets());
    h[22..24].copy_from_slice(&PORT.to_be_bytes());
    h[28] = 0x08; // a valid VNI follows
    h[32..36].copy_from_slice(&(VNI << 8).to_be_bytes());
    h[42..48].copy_from_slice(source);
    h[48..50].copy_from_slice(&[0x08, 0x00]);
    h
}

/// Encapsulates the frame in VXLAN (the remote node's entry in r7) and sends it out of
/// `underlay` through the neighbour table; a frame the outer header's length cannot describe
/// takes the kernel's path (the VXLAN device).
fn encapsulate(a: &mut Asm, underlay: u32, local: Ipv4Addr, source: &Mac) {
    let at = |off: i16| STACK_HEADERS + off;
    // r8 = the outer IPv4 total length.
    a.load(Size::W, R8, R6, SKB_LEN)
        .alu_imm(Op::Add, R8, ENCAPSULATION as i32 - 14)
        .jump_imm(Cond::Gt, R8, 0xffff, "pass");
    let headers = vxlan_headers(local, source);
    for (i, word) in headers.chunks(4).enumerate() {
        let off = at(4 * i as i16);
        match *word {
            [a0, a1, a2, a3] => a.store_imm(Size::W, FP, off, i32::from_le_bytes([a0, a1, a2, a3])),
            [a0, a1] => a.store_imm(Size::H, FP, off, i32::from(u16::from_le_bytes([a0, a1]))),
            _ => unreachable!("the headers are 50 bytes"),
        };
    }
    a.load(Size::W, R4, R7, REMOTE_ADDRESS as i16)
        .store(Size::W, FP, at(OUTER_DESTINATION), R4)
        .load(Size::W, R4, R7, REMOTE_MAC as i16)
        .store(Size::W, FP, at(INNER_DESTINATION_MAC), R4)
        .load(Size::H, R4, R7, REMOTE_MAC as i16 + 4)
        .store(Size::H, FP, at(INNER_DESTINATION_MAC + 4), R4)
        .alu(Op::Mov, R4, R8)
        .be16(R4)
        .store(Size::H, FP, at(OUTER_LENGTH), R4)
        .alu(Op::Mov, R4, R8)
        .alu_imm(Op::Sub, R4, 20)
        .be16(R4)
        .store(Size::H, FP, at(UDP_LENGTH), R4)
        // A fresh identification, as the kernel picks one for each datagram that may be
        // fragmented (segmentation numbers the segments on from it).
        .call(GET_PRANDOM_U32)
        .store(Size::H, FP, at(OUTER_ID), R0);
    // The outer header's checksum: a one's complement sum of its ten 16-bit words, which comes
    // out right whatever byte order they are read in, as long as it is stored in the same.
    a.alu_imm(Op::Mov, R5, 0);
    for i in 0..10 {
        a.load(Size::H, R4, FP, at(2 * i)).alu(Op::Add, R5, R4);
    }
    for _ in 0..2 {
        a.alu(Op::Mov, R4, R5)
            .alu_imm(Op::Rsh, R4, 16)
            .alu_imm(Op::And, R5, 0xffff)
            .alu(Op::Add, R5, R4);
    }
    a.alu_imm(Op::Xor, R5, 0xffff).store(Size::H, FP, at(OUTER_CHECKSUM), R5);
    // The source port from the connection's hash (32768–65535), as the VXLAN device spreads
    // flows over the underlay's paths.
    a.alu(Op::Mov, R1, R6)
        .call(GET_HASH_RECALC)
        .alu_imm(Op::Rsh, R0, 17)
        .alu_imm(Op::Or, R0, 0x8000)
        .be16(R0)
        .store(Size::H, FP, at(UDP_SOURCE_PORT), R0);
    a.alu(Op::Mov, R1, R6)
        .alu_imm(Op::Mov, R2, ENCAPSULATION as i32)
        .alu_imm(Op::Mov, R3, ADJUST_ROOM_MAC)
        .load_imm64(R4, ADJUST_ROOM_FLAGS)
        .call(SKB_ADJUST_ROOM)
        .jump_imm(Cond::Ne, R0, 0, "pass")
        .alu(Op::Mov, R1, R6)
        .alu_imm(Op::Mov, R2, 14)
        .alu(Op::Mov, R3, FP)
        .alu_imm(Op::Add, R3, i32::from(STACK_HEADERS))
        .alu_imm(Op::Mov, R4, ENCAPSULATION as i32)
        .alu_imm(Op::Mov, R5, 0)
        .call(SKB_STORE_BYTES)
        // Room made but no headers in it: nothing sensible is left to send.
        .jump_imm(Cond::Ne, R0, 0, "drop")
        .alu_imm(Op::Mov, R1, underlay as i32)
        .alu_imm(Op::Mov, R2, 0)
        .alu_imm(Op::Mov, R3, 0)
        .alu_imm(Op::Mov, R4, 0)
        .call(REDIRECT_NEIGH)
        .exit()
        .label("drop")
        .alu_imm(Op::Mov, R0, DROP)
        .exit();
}

/// r0 = lookup of the key at `slot` in map `fd`; to `pass` when absent.
fn lookup(a: &mut Asm, fd: i32, slot: i16) {
    a.load_map(R1, fd)
        .alu(Op::Mov, R2, FP)
        .alu_imm(Op::Add, R2, i32::from(slot))
        .call(MAP_LOOKUP)
        .jump_imm(Cond::Eq, R0, 0, "pass");
}

/// `forget`: removes the connection keyed at the flow slot; and `pass`.
fn forget_and_pass(a: &mut Asm, flows: i32) {
    a.label("forget")
        .load_map(R1, flows)
        .alu(Op::Mov, R2, FP)
        .alu_imm(Op::Add, R2, i32::from(STACK_FLOW_KEY))
        .call(MAP_DELETE)
        .label("pass")
        .alu_imm(Op::Mov, R0, PASS as i32)
        .exit();
}

/// To `refresh` when no segment took the kernel's path yet (the time at `at` of the record in
/// `record` is 0) or more than [`REFRESH_NS`] ago; leaves the time now in r0.
fn due(a: &mut Asm, record: capstan_bpf::insn::Reg, at: i16) {
    a.call(KTIME_GET_NS)
        .load(Size::DW, R4, record, at)
        .jump_imm(Cond::Eq, R4, 0, "refresh")
        .alu(Op::Mov, R5, R0)
        .alu(Op::Sub, R5, R4)
        .load_imm64(R4, REFRESH_NS)
        .jump(Cond::Gt, R5, R4, "refresh");
}

/// The program on a pod's host-end interface.
pub fn egress(maps: MapFds, device: Device, via: Via) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    tcp_over_ipv4(&mut a);
    // Keys: the destination as a /32, and the connection (bytes 26..38 are in key order).
    a.store_imm(Size::W, FP, STACK_LOOKUP_KEY, 32)
        .load(Size::W, R4, R2, IP_DESTINATION)
        .store(Size::W, FP, STACK_LOOKUP_KEY + 4, R4);
    for (i, off) in [IP_SOURCE, IP_DESTINATION, TCP_SOURCE_PORT].into_iter().enumerate() {
        a.load(Size::W, R4, R2, off).store(Size::W, FP, STACK_FLOW_KEY + 4 * i as i16, R4);
    }
    a.load(Size::B, R8, R2, TCP_FLAGS).load(Size::W, R9, R2, TCP_SEQ).be32(R9);
    // Only to another node's pods.
    lookup(&mut a, maps.remotes, STACK_LOOKUP_KEY);
    a.alu(Op::Mov, R7, R0)
        .jump_imm(Cond::Set, R8, FIN | RST, "forget")
        .jump_imm(Cond::Set, R8, SYN, "record");
    lookup(&mut a, maps.flows, STACK_FLOW_KEY);
    a.alu(Op::Mov, R9, R0)
        .load(Size::W, R4, R9, FLOW_CONFIRMED)
        .jump_imm(Cond::Eq, R4, 0, "pass");
    due(&mut a, R9, FLOW_EGRESS_AT);
    match via {
        Via::Tunnel { underlay, local } => encapsulate(&mut a, underlay, local, &device.mac),
        Via::Neighbour => {
            a.store_imm(Size::W, FP, STACK_NEXT_HOP, AF_INET)
                .load(Size::W, R4, R7, REMOTE_ADDRESS as i16)
                .store(Size::W, FP, STACK_NEXT_HOP + 4, R4);
            for off in [8, 12, 16] {
                a.store_imm(Size::W, FP, STACK_NEXT_HOP + off, 0);
            }
            a.alu_imm(Op::Mov, R1, device.index as i32)
                .alu(Op::Mov, R2, FP)
                .alu_imm(Op::Add, R2, i32::from(STACK_NEXT_HOP))
                .alu_imm(Op::Mov, R3, 20)
                .alu_imm(Op::Mov, R4, 0)
                .call(REDIRECT_NEIGH)
                .exit();
        }
    }
    a.label("refresh").store(Size::DW, R9, FLOW_EGRESS_AT, R0).goto("pass");
    // A handshake segment from the local pod: the connection starts over, unconfirmed.
    a.label("record")
        .store(Size::W, FP, STACK_FLOW_VALUE + FLOW_ISN, R9)
        .store_imm(Size::W, FP, STACK_FLOW_VALUE + FLOW_CONFIRMED, 0)
        .store_imm(Size::DW, FP, STACK_FLOW_VALUE + FLOW_EGRESS_AT, 0)
        .store_imm(Size::DW, FP, STACK_FLOW_VALUE + FLOW_INGRESS_AT, 0)
        .load_map(R1, maps.flows)
        .alu(Op::Mov, R2, FP)
        .alu_imm(Op::Add, R2, i32::from(STACK_FLOW_KEY))
        .alu(Op::Mov, R3, FP)
        .alu_imm(Op::Add, R3, i32::from(STACK_FLOW_VALUE))
        .alu_imm(Op::Mov, R4, 0)
        .call(MAP_UPDATE)
        .goto("pass");
    forget_and_pass(&mut a, maps.flows);
    a.finish()
}

/// The program on the device fast segments arrive by.
pub fn ingress(maps: MapFds, device: Device) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    tcp_over_ipv4(&mut a);
    // Keys: the local pod, and the connection from this host's side (the packet's fields swapped).
    a.load(Size::W, R4, R2, IP_DESTINATION)
        .store(Size::W, FP, STACK_LOOKUP_KEY + 4, R4)
        .store(Size::W, FP, STACK_FLOW_KEY, R4)
        .load(Size::W, R4, R2, IP_SOURCE)
        .store(Size::W, FP, STACK_FLOW_KEY + 4, R4)
        .load(Size::H, R4, R2, TCP_DESTINATION_PORT)
        .store(Size::H, FP, STACK_FLOW_KEY + 8, R4)
        .load(Size::H, R4, R2, TCP_SOURCE_PORT)
        .store(Size::H, FP, STACK_FLOW_KEY + 10, R4);
    a.load(Size::B, R8, R2, TCP_FLAGS).load(Size::W, R9, R2, TCP_ACK).be32(R9);
    // Only to this node's pods that the fast path knows.
    lookup(&mut a, maps.pods, STACK_LOOKUP_KEY + 4);
    a.alu(Op::Mov, R7, R0)
        .jump_imm(Cond::Set, R8, FIN | RST, "forget")
        .jump_imm(Cond::Set, R8, SYN, "handshake");
    lookup(&mut a, maps.flows, STACK_FLOW_KEY);
    a.alu(Op::Mov, R8, R0)
        .load(Size::W, R4, R8, FLOW_CONFIRMED)
        .jump_imm(Cond::Ne, R4, 0, "confirmed");
    // Unconfirmed: the remote client's handshake ACK confirms the local server's side; it
    // takes the kernel's path (conntrack sees the connection established).
    a.load(Size::W, R4, R8, FLOW_ISN)
        .alu32_imm(Op::Add, R4, 1)
        .jump(Cond::Ne, R9, R4, "pass")
        .store_imm(Size::W, R8, FLOW_CONFIRMED, 1)
        .call(KTIME_GET_NS)
        .store(Size::DW, R8, FLOW_INGRESS_AT, R0)
        .goto("pass");
    a.label("confirmed");
    due(&mut a, R8, FLOW_INGRESS_AT);
    to_pod(&mut a, &device.mac);
    a.load(Size::W, R1, R7, POD_INDEX as i16)
        .alu_imm(Op::Mov, R2, 0)
        .call(REDIRECT_PEER)
        .exit();
    a.label("refresh").store(Size::DW, R8, FLOW_INGRESS_AT, R0).goto("pass");
    // The remote server's SYN-ACK confirms the local client's side when it acknowledges the
    // local SYN; a record it does not match is an earlier connection's.
    a.label("handshake")
        .jump_imm(Cond::Set, R8, ACK, "synack")
        .goto("pass")
        .label("synack");
    lookup(&mut a, maps.flows, STACK_FLOW_KEY);
    a.load(Size::W, R4, R0, FLOW_ISN)
        .alu32_imm(Op::Add, R4, 1)
        .jump(Cond::Ne, R9, R4, "forget")
        .store_imm(Size::W, R0, FLOW_CONFIRMED, 1)
        .goto("pass");
    forget_and_pass(&mut a, maps.flows);
    a.finish()
}
