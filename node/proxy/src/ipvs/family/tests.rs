//! Exact bytes of the IPVS family: our requests against the layout of `ip_vs.h`, and the
//! kernel's own answers (captured from Debian's 6.1 kernel in the qemu harness) parsed back.

use super::*;
use netlink_packet_core::ParseableParametrized;

fn web() -> VirtualServer {
    VirtualServer {
        protocol: Protocol::Tcp,
        addr: Ipv4Addr::new(10, 0, 0, 1),
        port: 80,
        scheduler: "rr".into(),
        persistence: 0,
    }
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).expect("hex")
}

/// IPVS_CMD_ATTR_SERVICE (with NLA_F_NESTED, as libnl writes it) holding AF, PROTOCOL, ADDR (16 bytes), PORT (big-endian), SCHED_NAME,
/// FLAGS {flags, mask}, TIMEOUT, NETMASK (big-endian), each padded to 4 bytes.
const NEW_SERVICE_TCP_10_0_0_1_80_RR: &str = "
    54000180
    0600 0100 0200 0000
    0600 0200 0600 0000
    1400 0300 0a000001 00000000 00000000 00000000
    0600 0400 0050 0000
    0700 0600 727200 00
    0c00 0700 00000000 ffffffff
    0800 0800 00000000
    0800 0900 ffffffff";

#[test]
fn new_service_matches_the_kernel_layout() {
    assert_eq!(encode(&Message::new_service(&web())), hex(NEW_SERVICE_TCP_10_0_0_1_80_RR));
}

#[test]
fn a_destination_request_names_the_service_then_the_real_server() {
    let real = RealServer {
        addr: Ipv4Addr::new(10, 0, 0, 2),
        port: 8080,
        weight: 1,
    };
    let expected = hex("
        30000180
        0600 0100 0200 0000
        0600 0200 0600 0000
        1400 0300 0a000001 00000000 00000000 00000000
        0600 0400 0050 0000
        48000280
        0600 0b00 0200 0000
        1400 0100 0a000002 00000000 00000000 00000000
        0600 0200 1f90 0000
        0800 0300 00000000
        0800 0400 01000000
        0800 0500 00000000
        0800 0600 00000000");
    assert_eq!(encode(&Message::new_dest(&web(), &real)), expected);
}

#[test]
fn persistence_sets_the_persistent_flag_and_the_timeout() {
    let mut s = web();
    s.persistence = 10_800;
    let attrs = s.full_attrs();
    assert!(attrs.contains(&ServiceAttr::Flags {
        flags: SVC_F_PERSISTENT,
        mask: u32::MAX
    }));
    assert!(attrs.contains(&ServiceAttr::Timeout(10_800)));
    assert_eq!(VirtualServer::from_attrs(&attrs), Some(s));
}

#[test]
fn requests_parse_back_to_themselves() {
    let real = RealServer {
        addr: Ipv4Addr::new(10, 244, 1, 7),
        port: 53,
        weight: 3,
    };
    let mut udp = web();
    udp.protocol = Protocol::Udp;
    for m in [
        Message::new_service(&udp),
        Message::del_service(&udp),
        Message::new_dest(&udp, &real),
        Message::del_dest(&udp, &real),
    ] {
        let header = GenlHeader {
            cmd: m.cmd.into(),
            version: FAMILY_VERSION,
        };
        let back = Message::parse_with_param(&encode(&m), header).expect("parses");
        assert_eq!(back, m);
    }
}

#[test]
fn unknown_attributes_are_kept_not_refused() {
    // STATS (10) nested, from a newer kernel: kept as Other, the rest still read.
    let mut bytes = hex(NEW_SERVICE_TCP_10_0_0_1_80_RR);
    bytes.extend(hex("0800 0c00 01020304"));
    let header = GenlHeader { cmd: 1, version: 1 };
    let m = Message::parse_with_param(&bytes, header).expect("parses");
    assert_eq!(m.attrs.len(), 2);
    assert_eq!(m.service().and_then(VirtualServer::from_attrs), Some(web()));
}

// Captured in the qemu harness (Debian 6.1.0-56 kernel, ipvsadm 1.31 with libnl 3.7) by
// tests/ipvs.rs, which prints them as IPVSADM-BYTES and KERNEL-BYTES.

/// `ipvsadm -A -t 10.0.0.5:443 -s wrr`, the genl payload seen on an nlmon interface.
const IPVSADM_NEW_SERVICE: &str = "5400018006000100020000000600020006000000140003000a0000050000000000000000000000000600040001bb000008000600777272000c00070000000000ffffffff080008000000000008000900ffffffff";
/// `ipvsadm -a -t 10.0.0.5:443 -r 10.0.0.2:8443 -m -w 3`.
const IPVSADM_NEW_DEST: &str = "5400018006000100020000000600020006000000140003000a0000050000000000000000000000000600040001bb000005000600000000000c00070000000000ffffffff080008000000000008000900ffffffff6000028006000b0002000000140001000a0000020000000000000000000000000600020020fb00000800030000000000080004000300000005000d000000000006000e000000000006000f000000000008000500000000000800060000000000";
/// The kernel's answer to a GET_SERVICE dump, whole netlink messages: the two services above
/// and `ipvsadm -A -u 10.0.0.9:53 -s sh -p 600`, with their STATS and STATS64 nests.
const KERNEL_SERVICES: [&str; 2] = [
    "40010000200002000300000063000000010100002c01010006000100020000000600020006000000140003000a0000050000000000000000000000000600040001bb000008000600777272000c00070002000000ffffffff080008000000000008000900ffffffff5c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000",
    "40010000200002000300000063000000010100002c01010006000100020000000600020011000000140003000a000009000000000000000000000000060004000035000007000600736800000c00070003000000ffffffff080008005802000008000900ffffffff5c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000",
];
/// The kernel's answer to a GET_DEST dump of tcp 10.0.0.5:443.
const KERNEL_DEST: &str = "640100002000020004000000630000000501000050010200140001000a0000020000000000000000000000000600020020fb00000800030000000000080004000300000005000d000000000006000e000000000006000f00000000000800050000000000080006000000000008000700000000000800080000000000080009000000000006000b00020000005c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c0005000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000000000000c000a000000000000000000";

fn https() -> VirtualServer {
    VirtualServer {
        protocol: Protocol::Tcp,
        addr: Ipv4Addr::new(10, 0, 0, 5),
        port: 443,
        scheduler: "wrr".into(),
        persistence: 0,
    }
}

/// A whole netlink message from the kernel: header checked, genl payload parsed.
fn kernel_message(bytes: &str, family: u16) -> Message {
    let b = hex(bytes);
    assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()) as usize, b.len(), "nlmsg_len");
    assert_eq!(
        u16::from_ne_bytes(b[4..6].try_into().unwrap()),
        family,
        "the family id the VM's kernel gave IPVS"
    );
    let header = GenlHeader {
        cmd: b[16],
        version: b[17],
    };
    Message::parse_with_param(&b[20..], header).expect("the kernel's answer parses")
}

#[test]
fn new_service_is_byte_for_byte_what_ipvsadm_sends() {
    assert_eq!(encode(&Message::new_service(&https())), hex(IPVSADM_NEW_SERVICE));
}

#[test]
fn ipvsadm_destination_request_reads_as_ours() {
    let theirs = Message::parse_with_param(&hex(IPVSADM_NEW_DEST), GenlHeader { cmd: 5, version: 1 }).expect("parses");
    let real = RealServer {
        addr: Ipv4Addr::new(10, 0, 0, 2),
        port: 8443,
        weight: 3,
    };
    assert_eq!(theirs.cmd, Command::NewDest);
    assert_eq!(theirs.dest().and_then(RealServer::from_attrs), Some(real));
    assert!(theirs.dest().unwrap().contains(&DestAttr::FwdMethod(FWD_MASQ)));
    let service = theirs.service().and_then(VirtualServer::from_attrs).expect("service key");
    assert_eq!((service.protocol, service.addr, service.port), (Protocol::Tcp, https().addr, 443));
    // Our destination nest is ipvsadm's without the tunnel attributes (TUN_TYPE, TUN_PORT,
    // TUN_FLAGS: 13, 14, 15).
    let mut theirs_dest = theirs.dest().unwrap().to_vec();
    theirs_dest.retain(|a| !matches!(a, DestAttr::Other(n) if (13..=15).contains(&n.kind())));
    assert_eq!(theirs_dest, real.full_attrs());
}

#[test]
fn the_kernels_service_dump_reads_back() {
    let tcp = kernel_message(KERNEL_SERVICES[0], 32);
    assert_eq!(tcp.cmd, Command::NewService, "dumps answer with NEW_SERVICE");
    assert_eq!(tcp.service().and_then(VirtualServer::from_attrs), Some(https()));
    // The kernel adds HASHED (0x2) to the flags and nests the statistics.
    assert!(tcp.service().unwrap().contains(&ServiceAttr::Flags { flags: 2, mask: u32::MAX }));
    let udp = kernel_message(KERNEL_SERVICES[1], 32);
    assert_eq!(
        udp.service().and_then(VirtualServer::from_attrs),
        Some(VirtualServer {
            protocol: Protocol::Udp,
            addr: Ipv4Addr::new(10, 0, 0, 9),
            port: 53,
            scheduler: "sh".into(),
            persistence: 600,
        })
    );
}

#[test]
fn the_kernels_destination_dump_reads_back() {
    let m = kernel_message(KERNEL_DEST, 32);
    assert_eq!(m.cmd, Command::NewDest);
    assert_eq!(
        m.dest().and_then(RealServer::from_attrs),
        Some(RealServer {
            addr: Ipv4Addr::new(10, 0, 0, 2),
            port: 8443,
            weight: 3,
        })
    );
    assert!(m.dest().unwrap().contains(&DestAttr::ActiveConns(0)));
}
