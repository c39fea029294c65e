//! The fast path's programs, loaded into this kernel and run on crafted packets
//! (`BPF_PROG_TEST_RUN`: the verdict and the packet as the program left it; nothing is sent).
//! Needs root (CAP_BPF, CAP_NET_ADMIN).

use super::programs::{PASS, REDIRECTED};
use super::*;

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VTEP_MAC: Mac = [0x0e, 0xca, 1, 1, 1, 1];
const REMOTE_VTEP_MAC: Mac = [0x0e, 0xca, 2, 2, 2, 2];
const POD_HWADDR: Mac = [0x02, 0x42, 5, 5, 5, 5];
const POD_IFINDEX: u32 = 77;
const UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 12);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

fn fast_path() -> FastPath {
    let tunnel = Via::Tunnel {
        underlay: 3,
        local: UNDERLAY,
    };
    fast_path_via(tunnel, Some(&REMOTE_VTEP_MAC))
}

/// A fast path sending `via` the device, to REMOTE_NODE (with VXLAN its VTEP `vtep`) for the
/// remote range 10.244.2.0/24.
fn fast_path_via(via: Via, vtep: Option<&Mac>) -> FastPath {
    let fp = FastPath::load(Device { index: 9, mac: VTEP_MAC }, via).expect("the fast path loads (needs root)");
    let remote = remote_value(REMOTE_NODE, vtep);
    fp.set_remotes(&BTreeMap::from([("10.244.2.0/24".parse().unwrap(), remote)]))
        .unwrap();
    fp.pods.update(&LOCAL.octets(), &pod_value(POD_IFINDEX, &POD_HWADDR)).unwrap();
    fp
}

/// An Ethernet frame with IPv4 and TCP from `src` to `dst`.
fn segment(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut p = vec![0u8; 54 + 10];
    p[..6].copy_from_slice(&[0xaa; 6]);
    p[6..12].copy_from_slice(&[0xbb; 6]);
    p[12..14].copy_from_slice(&[0x08, 0x00]);
    p[14] = 0x45;
    p[16..18].copy_from_slice(&(40u16 + 10).to_be_bytes());
    p[20] = 0x40; // don't fragment
    p[22] = 64;
    p[23] = 6;
    p[26..30].copy_from_slice(&src.0.octets());
    p[30..34].copy_from_slice(&dst.0.octets());
    p[34..36].copy_from_slice(&src.1.to_be_bytes());
    p[36..38].copy_from_slice(&dst.1.to_be_bytes());
    p[38..42].copy_from_slice(&seq.to_be_bytes());
    p[42..46].copy_from_slice(&ack.to_be_bytes());
    p[46] = 5 << 4;
    p[47] = flags;
    p
}

fn out(local_port: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    segment((LOCAL, local_port), (REMOTE, 80), flags, seq, ack)
}

fn inward(local_port: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    segment((REMOTE, 80), (LOCAL, local_port), flags, seq, ack)
}

/// The fast path's key of the connection from LOCAL:`local_port` to REMOTE:80.
fn flow_key(local_port: u16) -> Vec<u8> {
    let mut key = Vec::new();
    key.extend(LOCAL.octets());
    key.extend(REMOTE.octets());
    key.extend(local_port.to_be_bytes());
    key.extend(80u16.to_be_bytes());
    key
}

fn flow(fp: &FastPath, local_port: u16) -> Option<Vec<u8>> {
    fp.flows.lookup(&flow_key(local_port)).unwrap()
}

fn egress(fp: &FastPath, p: &[u8]) -> (u32, Vec<u8>) {
    fp.egress.test_run(p).unwrap()
}

fn ingress(fp: &FastPath, p: &[u8]) -> (u32, Vec<u8>) {
    fp.ingress.test_run(p).unwrap()
}

/// `packet` is `frame` in VXLAN as the kernel's VXLAN device sends it (RFC 7348): after the
/// outer Ethernet header (the frame's own, its MACs for the neighbour table to fill in), IPv4
/// from this node to the remote one, UDP to 8472, VNI 1, and the frame addressed from our VTEP
/// to the remote one.
fn assert_vxlan(packet: &[u8], frame: &[u8]) {
    assert_eq!(packet.len(), frame.len() + 50, "{packet:02x?}");
    assert_eq!(packet[..14], frame[..14]);
    let (ip, udp, vxlan, inner) = (&packet[14..34], &packet[34..42], &packet[42..50], &packet[50..]);
    let length = (frame.len() - 14 + 50) as u16;
    assert_eq!(ip[..4], [0x45, 0, (length >> 8) as u8, length as u8], "version, length");
    assert_eq!(ip[6..10], [0, 0, 64, 17], "fragments allowed, TTL, UDP");
    assert_eq!(ip[12..16], UNDERLAY.octets());
    assert_eq!(ip[16..20], REMOTE_NODE.octets());
    let sum = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    assert_eq!((folded & 0xffff) + (folded >> 16), 0xffff, "the header checksum holds");
    assert!(u16::from_be_bytes([udp[0], udp[1]]) >= 32768, "a source port from the flow's hash");
    assert_eq!(udp[2..], [0x21, 0x18, ((length - 20) >> 8) as u8, (length - 20) as u8, 0, 0]);
    assert_eq!(vxlan, [0x08, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(inner[..6], REMOTE_VTEP_MAC, "to the remote VTEP");
    assert_eq!(inner[6..12], VTEP_MAC, "from ours");
    assert_eq!(inner[12..], frame[12..], "the rest of the frame unchanged");
}

#[test]
fn a_client_connection_goes_fast_once_both_sides_are_confirmed_and_conntrack_saw_it() {
    let fp = fast_path();
    // The local client's SYN takes the kernel's path and is remembered.
    assert_eq!(egress(&fp, &out(40000, SYN, 1000, 0)).0, PASS);
    let record = flow(&fp, 40000).expect("the SYN is remembered");
    assert_eq!(u32::from_ne_bytes(record[..4].try_into().unwrap()), 1000);
    // Not confirmed yet: kernel's path.
    assert_eq!(egress(&fp, &out(40000, ACK, 1001, 5001)).0, PASS);
    // The server's SYN-ACK acknowledges our SYN: confirmed, itself through the kernel.
    assert_eq!(ingress(&fp, &inward(40000, SYN | ACK, 5000, 1001)).0, PASS);
    // The first segment each way still goes through conntrack, the next ones go fast.
    assert_eq!(egress(&fp, &out(40000, ACK, 1001, 5001)).0, PASS);
    let (verdict, packet) = egress(&fp, &out(40000, ACK, 1001, 5001));
    assert_eq!(verdict, REDIRECTED);
    assert_vxlan(&packet, &out(40000, ACK, 1001, 5001));
    assert_eq!(ingress(&fp, &inward(40000, ACK, 5001, 1001)).0, PASS);
    let (verdict, packet) = ingress(&fp, &inward(40000, ACK, 5001, 1001));
    assert_eq!(verdict, REDIRECTED);
    assert_eq!(packet[..6], POD_HWADDR, "to the pod");
    // A minute on (the last kernel's-path segment each way set long ago), one segment each way
    // takes the kernel's path again, so that conntrack's entry stays.
    let mut record = flow(&fp, 40000).unwrap();
    record[8..24].copy_from_slice(&[[1, 0, 0, 0, 0, 0, 0, 0]; 2].concat());
    fp.flows.update(&flow_key(40000), &record).unwrap();
    assert_eq!(egress(&fp, &out(40000, ACK, 1001, 5001)).0, PASS);
    assert_eq!(egress(&fp, &out(40000, ACK, 1001, 5001)).0, REDIRECTED);
    assert_eq!(ingress(&fp, &inward(40000, ACK, 5001, 1001)).0, PASS);
    assert_eq!(ingress(&fp, &inward(40000, ACK, 5001, 1001)).0, REDIRECTED);
    // A FIN either way takes the kernel's path and ends the fast path for the connection.
    assert_eq!(ingress(&fp, &inward(40000, FIN | ACK, 5001, 1001)).0, PASS);
    assert!(flow(&fp, 40000).is_none());
    assert_eq!(egress(&fp, &out(40000, ACK, 1001, 5002)).0, PASS);
}

#[test]
fn a_server_connection_is_confirmed_by_the_clients_handshake_ack() {
    let fp = fast_path();
    // The remote client's SYN: nothing to remember yet.
    assert_eq!(ingress(&fp, &inward(40001, SYN, 7000, 0)).0, PASS);
    assert!(flow(&fp, 40001).is_none());
    // Our SYN-ACK is remembered with our initial sequence number.
    assert_eq!(egress(&fp, &out(40001, SYN | ACK, 3000, 7001)).0, PASS);
    // An ACK of something else confirms nothing.
    assert_eq!(ingress(&fp, &inward(40001, ACK, 7001, 9999)).0, PASS);
    assert_eq!(ingress(&fp, &inward(40001, ACK, 7001, 9999)).0, PASS);
    // The client's ACK of our SYN confirms it, through the kernel; the next one goes fast.
    assert_eq!(ingress(&fp, &inward(40001, ACK, 7001, 3001)).0, PASS);
    assert_eq!(ingress(&fp, &inward(40001, ACK, 7001, 3001)).0, REDIRECTED);
    assert_eq!(egress(&fp, &out(40001, ACK, 3001, 7001)).0, PASS);
    assert_eq!(egress(&fp, &out(40001, ACK, 3001, 7001)).0, REDIRECTED);
}

#[test]
fn replies_of_connections_this_host_did_not_see_addressed_to_the_pod_take_the_kernels_path() {
    let fp = fast_path();
    // The client addressed a Service (translated here): no record, so the server's replies
    // come through conntrack, which restores the Service's address.
    assert_eq!(egress(&fp, &segment((LOCAL, 40002), (SERVICE, 80), SYN, 1, 0)).0, PASS);
    assert!(flow(&fp, 40002).is_none());
    assert_eq!(ingress(&fp, &inward(40002, SYN | ACK, 5000, 2)).0, PASS);
    for _ in 0..3 {
        assert_eq!(ingress(&fp, &inward(40002, ACK, 5001, 2)).0, PASS);
    }
    // A record of an earlier connection with the same ports is not confirmed by another
    // connection's handshake: it is dropped.
    assert_eq!(egress(&fp, &out(40003, SYN, 100, 0)).0, PASS);
    assert_eq!(ingress(&fp, &inward(40003, SYN | ACK, 5000, 77_777)).0, PASS);
    assert!(flow(&fp, 40003).is_none());
    for _ in 0..3 {
        assert_eq!(ingress(&fp, &inward(40003, ACK, 5001, 77_777)).0, PASS);
    }
}

#[test]
fn only_tcp_to_other_nodes_pods_is_considered() {
    let fp = fast_path();
    // Another range: no record, kernel's path.
    let local_range = segment((LOCAL, 40004), (Ipv4Addr::new(10, 244, 1, 9), 80), SYN, 1, 0);
    assert_eq!(egress(&fp, &local_range).0, PASS);
    // UDP, a fragment, ARP: untouched.
    let mut udp = out(40005, SYN, 1, 0);
    udp[23] = 17;
    let mut fragment = out(40005, SYN, 1, 0);
    fragment[20] = 0x20;
    let mut arp = out(40005, SYN, 1, 0);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    for p in [udp, fragment, arp, vec![0u8; 20]] {
        assert_eq!(egress(&fp, &p).0, PASS);
        assert_eq!(ingress(&fp, &p).0, PASS);
    }
    assert_eq!(fp.connections().unwrap(), 0);
    // A remote node that left: its range is no longer fast.
    fp.set_remotes(&BTreeMap::new()).unwrap();
    assert_eq!(egress(&fp, &out(40006, SYN, 1, 0)).0, PASS);
    assert!(flow(&fp, 40006).is_none());
}

#[test]
fn with_host_gw_a_fast_segment_goes_to_the_remote_node_through_the_neighbour_table() {
    let fp = fast_path_via(Via::Neighbour, None);
    assert_eq!(egress(&fp, &out(40007, SYN, 1000, 0)).0, PASS);
    assert_eq!(ingress(&fp, &inward(40007, SYN | ACK, 5000, 1001)).0, PASS);
    assert_eq!(egress(&fp, &out(40007, ACK, 1001, 5001)).0, PASS);
    let (verdict, packet) = egress(&fp, &out(40007, ACK, 1001, 5001));
    assert_eq!(verdict, REDIRECTED);
    // The kernel fills in both MACs on the way out; the program leaves the frame as it was.
    assert_eq!(packet, out(40007, ACK, 1001, 5001));
}
