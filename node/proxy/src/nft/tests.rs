use super::elements::FIXED_SETS;
use super::*;
use crate::model::{Backend, Frontend, Policy, Protocol, VirtualService};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

fn settings() -> NftSettings {
    NftSettings::new("capstan-proxy", capstan_api::cidr::SERVICE_RANGE, capstan_api::cidr::POD_RANGE)
}

fn vs(frontend: Frontend, backends: &[(&str, u16)], affinity: Option<u32>) -> VirtualService {
    VirtualService {
        frontend,
        protocol: Protocol::Tcp,
        service: "shop/web:http".into(),
        affinity,
        backends: backends.iter().map(|(ip, p)| (ip.parse().unwrap(), *p)).collect(),
        policy: Default::default(),
    }
}

fn vip(port: u16) -> Frontend {
    Frontend::ClusterIp("10.96.0.20".parse().unwrap(), port)
}

fn key(port: u16) -> ClusterKey {
    ("10.96.0.20".parse().unwrap(), Protocol::Tcp, port)
}

fn ep(ip: &str, port: u16) -> Backend {
    (ip.parse().unwrap(), port)
}

#[test]
fn a_service_spreads_through_the_pick_chain_of_its_endpoint_count() {
    let rs = Ruleset::build(
        &[vs(
            vip(80),
            &[("10.244.0.5", 8080), ("10.244.0.7", 8080), ("10.244.0.9", 8080)],
            None,
        )],
        &settings(),
    );
    assert_eq!(rs.service_ips[&key(80)], "pick-tcp-3");
    assert_eq!(
        rs.chains["pick-tcp-3"],
        vec![
            "ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000",
            "dnat to ip daddr . tcp dport . numgen random mod 3 map @endpoints-tcp",
        ]
    );
    assert_eq!(rs.chains.len(), 1, "no chain of its own without affinity");
    assert_eq!(
        rs.endpoints.iter().map(|((k, slot), b)| (*k, *slot, *b)).collect::<Vec<_>>(),
        vec![
            (key(80), 0, ep("10.244.0.5", 8080)),
            (key(80), 1, ep("10.244.0.7", 8080)),
            (key(80), 2, ep("10.244.0.9", 8080)),
        ]
    );
    assert_eq!(rs.hairpin[&"10.244.0.5".parse().unwrap()], 1);
}

#[test]
fn affinity_node_ports_and_services_without_endpoints() {
    let mut s = settings();
    s.spread = Spread::RoundRobin;
    let rs = Ruleset::build(
        &[
            vs(vip(80), &[("10.244.0.5", 8080), ("10.244.0.6", 8080)], Some(60)),
            vs(vip(81), &[], None),
            vs(Frontend::NodePort(30080), &[("10.244.0.5", 8080), ("10.244.0.6", 8080)], None),
            vs(Frontend::NodePort(30081), &[], None),
        ],
        &s,
    );
    assert_eq!(rs.service_ips.len(), 1, "a ClusterIP without endpoints has no element");
    assert_eq!(rs.sets.values().collect::<Vec<_>>(), vec![&60, &60]);
    let svc = &rs.service_ips[&key(80)];
    assert!(svc.starts_with("svc-") && svc.ends_with("-shop/web/http"), "{svc}");
    let rules = &rs.chains[svc];
    assert!(
        rules[1].starts_with("ip saddr @affinity-") && rules[2].starts_with("ip saddr @affinity-"),
        "{rules:?}"
    );
    assert!(rules[3].starts_with("numgen inc mod 2 == 0 goto endpoint-"), "{rules:?}");
    assert!(rules[4].starts_with("goto endpoint-"), "{rules:?}");
    let endpoint = rules[4].strip_prefix("goto ").unwrap();
    assert!(rs.chains[endpoint][0].starts_with("update @affinity-"));
    assert_eq!(rs.chains[endpoint][1], "meta l4proto tcp dnat to 10.244.0.6:8080");
    assert!(rs.endpoints.is_empty(), "affinity endpoints live in their chains");
    assert_eq!(rs.node_ports[&(Protocol::Tcp, 30080)], "nodeport-pick-tcp-2");
    assert_eq!(
        rs.chains["nodeport-pick-tcp-2"],
        vec![
            "meta mark set meta mark | 0x4000",
            "dnat to tcp dport . numgen inc mod 2 map @node-port-endpoints-tcp",
        ],
        "node ports always masquerade"
    );
    assert_eq!(rs.node_port_endpoints[&((Protocol::Tcp, 30080), 1)], ep("10.244.0.6", 8080));
    assert_eq!(rs.no_endpoint_node_ports.iter().collect::<Vec<_>>(), vec![&(Protocol::Tcp, 30081)]);
    assert_eq!(rs.hairpin[&"10.244.0.5".parse().unwrap()], 2, "two service ports use it");
}

#[test]
fn local_policies_send_to_this_nodes_endpoints_and_node_ports_keep_the_client() {
    let cluster = vec![ep("10.244.1.5", 8080), ep("10.244.2.5", 8080)];
    let local = |frontend, backends: &[(&str, u16)]| {
        let mut v = vs(frontend, backends, None);
        v.policy = Policy::Local { cluster: cluster.clone() };
        v
    };
    let rs = Ruleset::build(
        &[
            local(vip(80), &[("10.244.2.5", 8080)]),
            local(vip(81), &[]),
            local(Frontend::NodePort(30080), &[("10.244.2.5", 8080)]),
            local(Frontend::NodePort(30081), &[]),
        ],
        &settings(),
    );
    let chain = |name: &str| rs.chains[name].iter().map(String::as_str).collect::<Vec<_>>();
    // ClusterIP: off-cluster clients masqueraded as always, then this node's endpoint only.
    let svc = &rs.service_ips[&key(80)];
    assert_eq!(
        chain(svc),
        vec![
            "ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000",
            "meta l4proto tcp dnat to 10.244.2.5:8080"
        ]
    );
    // None here but some elsewhere: dropped, not rejected (the service has endpoints).
    assert_eq!(chain(&rs.service_ips[&key(81)]).last(), Some(&"drop"));
    // Node port: pods and the node itself take the whole cluster's endpoints (the node
    // masqueraded); everyone else this node's, keeping the client's address (no mark).
    let np = &rs.node_ports[&(Protocol::Tcp, 30080)];
    let whole = format!("{np}/cluster");
    assert_eq!(
        chain(np),
        vec![
            format!("ip saddr 10.244.0.0/16 goto {whole}").as_str(),
            format!("fib saddr type local meta mark set meta mark | 0x4000 goto {whole}").as_str(),
            "meta l4proto tcp dnat to 10.244.2.5:8080",
        ]
    );
    assert_eq!(
        chain(&whole),
        vec![
            "numgen random mod 2 == 0 meta l4proto tcp dnat to 10.244.1.5:8080",
            "meta l4proto tcp dnat to 10.244.2.5:8080"
        ]
    );
    let empty = &rs.node_ports[&(Protocol::Tcp, 30081)];
    assert_eq!(chain(empty).last(), Some(&"drop"));
    assert!(rs.no_endpoint_node_ports.is_empty(), "endpoints elsewhere: not rejected");
    assert!(rs.endpoints.is_empty() && rs.node_port_endpoints.is_empty());
    assert!(
        rs.hairpin.contains_key(&"10.244.1.5".parse().unwrap()),
        "every endpoint it may reach"
    );
    // No endpoint anywhere: rejected as under the Cluster policy.
    let mut none = local(Frontend::NodePort(30082), &[]);
    none.policy = Policy::Local { cluster: Vec::new() };
    let rs = Ruleset::build(&[none], &settings());
    assert!(rs.node_ports.is_empty() && rs.no_endpoint_node_ports.contains(&(Protocol::Tcp, 30082)));
}

#[test]
fn the_renderer_keeps_the_same_table_as_a_full_build() {
    let s = settings();
    let mut other = vs(vip(443), &[("10.244.0.9", 8443)], Some(30));
    other.service = "shop/api:https".into();
    let first = vec![vs(vip(80), &[("10.244.0.5", 8080)], None), other.clone()];
    let second = vec![vs(vip(80), &[("10.244.0.6", 8080), ("10.244.0.5", 8080)], None), other];
    let mut r = Renderer::default();
    r.render(&first, &s);
    assert_eq!(r.total(), &Ruleset::build(&first, &s));
    r.render(&second, &s);
    assert_eq!(r.total(), &Ruleset::build(&second, &s));
    let update = r.render(&second[1..], &s);
    assert_eq!(r.total(), &Ruleset::build(&second[1..], &s), "a removed service goes");
    assert!(update.post.is_empty(), "the unused pick chain is kept: {}", update.describe());
    assert_eq!(
        r.render(&[], &s).elements.len(),
        2,
        "the last service's elements go: {:?}",
        r.total()
    );
    assert_eq!(r.total(), &Ruleset::default());
}

#[test]
fn an_endpoint_change_is_a_few_elements_and_no_rule() {
    let s = settings();
    let mut other = vs(vip(443), &[("10.244.0.5", 8443)], None);
    other.service = "shop/api:https".into();
    let mut r = Renderer::default();
    r.render(
        &[vs(vip(80), &[("10.244.0.5", 8080), ("10.244.0.7", 8080)], None), other.clone()],
        &s,
    );
    let update = r.render(
        &[vs(vip(80), &[("10.244.0.6", 8080), ("10.244.0.7", 8080)], None), other.clone()],
        &s,
    );
    assert_eq!(update.pre, "", "no rule changes");
    assert_eq!(update.post, "");
    let text: Vec<String> = update.elements.iter().map(|op| op.to_string()).collect();
    assert_eq!(
        text,
        vec![
            "delete element endpoints-tcp { 10.96.0.20 . 80 . 0 : 10.244.0.5 . 8080 }",
            "add element endpoints-tcp { 10.96.0.20 . 80 . 0 : 10.244.0.6 . 8080 }",
            "add element hairpin { 10.244.0.6 . 10.244.0.6 }",
        ],
        "10.244.0.5 stays in the hairpin set: the other service still uses it"
    );
    assert!(
        r.render(
            &[vs(vip(80), &[("10.244.0.6", 8080), ("10.244.0.7", 8080)], None), other.clone()],
            &s
        )
        .is_empty(),
        "no change, no transaction"
    );

    // One endpoint more: the service moves to the pick chain for three, made before and the
    // one for two (still used by nobody else) removed after.
    let update = r.render(
        &[
            vs(vip(80), &[("10.244.0.6", 8080), ("10.244.0.7", 8080), ("10.244.0.8", 8080)], None),
            other.clone(),
        ],
        &s,
    );
    assert!(
        update.pre.starts_with("add chain ip capstan-proxy pick-tcp-3\n"),
        "{}",
        update.describe()
    );
    assert_eq!(
        update.elements[..2],
        [
            ElementOp::Delete(Entry::ServiceIp(key(80), "pick-tcp-2".into())),
            ElementOp::Add(Entry::ServiceIp(key(80), "pick-tcp-3".into())),
        ]
    );
    assert_eq!(update.post, "", "the pick chain for two stays for the next time");
    // Back to two: elements only; a full update then removes the chain for three.
    let update = r.render(&[vs(vip(80), &[("10.244.0.6", 8080), ("10.244.0.7", 8080)], None), other], &s);
    assert!(update.pre.is_empty() && update.post.is_empty(), "{}", update.describe());
    let kernel = Listing {
        chains: ["pick-tcp-1", "pick-tcp-2", "pick-tcp-3"].map(String::from).into(),
        sets: BTreeSet::new(),
    };
    let full = r.full_update(&s, &kernel);
    assert!(full.post.contains("delete chain ip capstan-proxy pick-tcp-3"), "{}", full.post);
    assert!(
        !full.post.contains("pick-tcp-2") && !full.post.contains("pick-tcp-1"),
        "{}",
        full.post
    );
}

#[test]
fn a_full_update_refills_every_map_and_removes_strays() {
    let s = settings();
    let rs = Ruleset::build(
        &[
            vs(vip(80), &[("10.244.0.5", 8080)], Some(10)),
            vs(vip(81), &[("10.244.0.5", 8080)], None),
        ],
        &s,
    );
    let kernel = parse_listing(
        "table ip capstan-proxy {\n\tmap service-ips {\n\t}\n\tset affinity-deadbeef {\n\t}\n\tchain services {\n\t}\n\tchain svc-old {\n\t}\n}\n",
    );
    assert!(kernel.chains.contains("svc-old") && kernel.sets.contains("service-ips"));
    let u = full_update(&rs, &s, &kernel);
    assert!(u.post.contains("delete chain ip capstan-proxy svc-old"));
    assert!(u.post.contains("delete set ip capstan-proxy affinity-deadbeef"));
    assert!(!u.post.contains("delete chain ip capstan-proxy services"));
    assert!(!u.post.contains("service-ips"));
    assert!(u.pre.contains("ct state new ip daddr 10.96.0.0/16 jump reject-service"));
    assert!(u.pre.contains("add chain ip capstan-proxy pick-tcp-1\n"));
    assert_eq!(
        u.elements[..8],
        FIXED_SETS.map(ElementOp::Flush),
        "one transaction empties and refills"
    );
    assert!(u.elements.contains(&ElementOp::Add(Entry::Hairpin("10.244.0.5".parse().unwrap()))));
    assert!(
        u.elements
            .contains(&ElementOp::Add(Entry::Endpoint(key(81), 0, ep("10.244.0.5", 8080))))
    );
}

/// The attributes `nft --debug=mnl` showed nft 1.0.6 sending for
/// `add element ip t endpoints-tcp { 10.96.0.1 . 80 . 2 : 10.244.0.3 . 8080 }` and
/// `add element ip t service-ips { 10.96.0.1 . udp . 53 : goto pick-3 }` (x86-64), less the
/// NFTA_SET_ELEM_LIST_SET_ID nft adds (the kernel only needs it for a set made in the same batch).
const NFT_ENDPOINT_ATTRS: &str = "0600 0100 74000000 \
     1200 0200 656e64706f696e74732d746370000000 \
     2c00 0380 2800 0180 1400 0180 1000 0100 0a600001 00500000 02000000 \
     1000 0280 0c00 0100 0af40003 1f900000";
const NFT_SERVICE_IP_ATTRS: &str = "0600 0100 74000000 \
     1000 0200 736572766963652d69707300 \
     3800 0380 3400 0180 1400 0180 1000 0100 0a600001 11000000 00350000 \
     1c00 0280 1800 0280 0800 0100 fffffffc 0b00 0200 7069636b2d330000";

fn hex_bytes(text: &str) -> Vec<u8> {
    hex::decode(text.split_whitespace().collect::<String>()).unwrap()
}

#[test]
fn elements_are_encoded_as_nft_sends_them() {
    let ops = [
        ElementOp::Add(Entry::Endpoint(
            ("10.96.0.1".parse().unwrap(), Protocol::Tcp, 80),
            2,
            ep("10.244.0.3", 8080),
        )),
        ElementOp::Add(Entry::ServiceIp(("10.96.0.1".parse().unwrap(), Protocol::Udp, 53), "pick-3".into())),
    ];
    let batch = elements::encode("t", &ops, 1).unwrap();
    // Four messages: batch begin, two NEWSETELEM, batch end.
    let mut messages = Vec::new();
    let mut at = 0;
    while at < batch.bytes.len() {
        let len = u32::from_ne_bytes(batch.bytes[at..at + 4].try_into().unwrap()) as usize;
        messages.push(&batch.bytes[at..at + len]);
        at += len;
    }
    assert_eq!(messages.len(), 4);
    let header = |m: &[u8]| {
        (
            u16::from_ne_bytes([m[4], m[5]]),
            u16::from_ne_bytes([m[6], m[7]]),
            u32::from_ne_bytes(m[8..12].try_into().unwrap()),
            m[16..20].to_vec(),
        )
    };
    assert_eq!(header(messages[0]), (0x10, 0x1, 0, vec![0, 0, 0, 10]), "batch begin for nf_tables");
    assert_eq!(
        header(messages[1]),
        (0x0a0c, 0x401, 1, vec![2, 0, 0, 0]),
        "NEWSETELEM, create, family ip"
    );
    assert_eq!(
        header(messages[2]),
        (0x0a0c, 0x405, 2, vec![2, 0, 0, 0]),
        "the last one asks for an ack"
    );
    assert_eq!(header(messages[3]), (0x11, 0x1, 3, vec![0, 0, 0, 10]));
    assert_eq!(messages[1][20..], hex_bytes(NFT_ENDPOINT_ATTRS));
    assert_eq!(messages[2][20..], hex_bytes(NFT_SERVICE_IP_ATTRS));
    assert_eq!(batch.last_seq(), 2);
    assert!(batch.describe(2).starts_with("add element service-ips"), "{}", batch.describe(2));
}

#[test]
fn many_elements_are_split_under_the_attribute_length_limit_and_flush_has_no_list() {
    let ops: Vec<ElementOp> = std::iter::once(ElementOp::Flush(elements::HAIRPIN))
        .chain((0..10_000u32).map(|i| ElementOp::Add(Entry::Hairpin(Ipv4Addr::from(0x0af4_0000 + i)))))
        .collect();
    let batch = elements::encode("capstan-proxy", &ops, 7).unwrap();
    assert!(batch.messages.len() > 3, "{}", batch.messages.len());
    assert_eq!(batch.messages[0], "flush hairpin");
    let mut at = 0;
    let mut seen = 0;
    while at < batch.bytes.len() {
        let len = u32::from_ne_bytes(batch.bytes[at..at + 4].try_into().unwrap()) as usize;
        assert!(len < 65_536, "{len}");
        seen += 1;
        at += len;
    }
    assert_eq!(seen, batch.messages.len() + 2);
}

#[test]
fn kernel_answers_name_the_refused_message() {
    // An extended error for seq 3 (EEXIST), with the kernel's text, then the ack of seq 4.
    let mut data = Vec::new();
    let mut error = Vec::new();
    error.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
    error.extend_from_slice(&[20, 0, 0, 0, 0x0c, 0x0a, 0x01, 0x04, 3, 0, 0, 0, 0, 0, 0, 0]);
    error.extend_from_slice(&[9, 0, 1, 0, b'b', b'u', b's', b'y', 0, 0, 0, 0]);
    let len = 16 + error.len() as u32;
    data.extend_from_slice(&len.to_ne_bytes());
    data.extend_from_slice(&[2, 0, 0x00, 0x03, 3, 0, 0, 0, 0, 0, 0, 0]);
    data[6..8].copy_from_slice(&(0x100u16 | 0x200).to_ne_bytes());
    data.extend_from_slice(&error);
    let mut ack = Vec::new();
    ack.extend_from_slice(&36u32.to_ne_bytes());
    ack.extend_from_slice(&[2, 0, 0, 1, 4, 0, 0, 0, 0, 0, 0, 0]);
    ack.extend_from_slice(&0i32.to_ne_bytes());
    ack.extend_from_slice(&[20, 0, 0, 0, 0x0c, 0x0a, 0x05, 0x04, 4, 0, 0, 0, 0, 0, 0, 0]);
    data.extend_from_slice(&ack);
    assert_eq!(
        elements::parse_answers(&data),
        vec![
            elements::Ack {
                seq: 3,
                errno: libc::EEXIST,
                message: Some("busy".into())
            },
            elements::Ack {
                seq: 4,
                errno: 0,
                message: None
            },
        ]
    );
}

#[test]
fn the_ipvs_hairpin_set_follows_the_endpoints() {
    let web = vs(vip(80), &[("10.244.0.5", 8080), ("10.244.0.6", 8080)], None);
    let (full, held) = hairpin_update(None, std::slice::from_ref(&web));
    assert_eq!(
        full.elements[0],
        ElementOp::Flush(elements::HAIRPIN),
        "unknown content is rewritten whole"
    );
    assert_eq!(full.elements.len(), 3);
    let moved = vs(vip(80), &[("10.244.0.6", 8080), ("10.244.0.7", 8080)], None);
    let (update, _) = hairpin_update(Some(&held), &[moved]);
    assert_eq!(
        update.elements,
        vec![
            ElementOp::Delete(Entry::Hairpin("10.244.0.5".parse().unwrap())),
            ElementOp::Add(Entry::Hairpin("10.244.0.7".parse().unwrap())),
        ]
    );
    let guard = ipvs_guard_script("capstan-proxy", capstan_api::cidr::SERVICE_RANGE);
    assert!(guard.contains("ip saddr . ip daddr @hairpin masquerade"), "{guard}");
}
