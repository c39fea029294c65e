//! Cluster DNS, served by each host's proxy from the Services it already watches:
//! `<service>.<namespace>.svc.<domain>` answers the ClusterIP (a headless Service: its ready
//! endpoints), `_<port>._<protocol>.<service>.<namespace>.svc.<domain>` an SRV record for each
//! named port (pointing at the service's own name), other names in the cluster domain are
//! NXDOMAIN; names outside it go to the host's resolver (the first `nameserver` of
//! /etc/resolv.conf, as CoreDNS's default `forward . /etc/resolv.conf`), or are REFUSED where
//! there is none. Pods reach it at the `kube-dns` ClusterIP, which the proxy points here; it
//! answers only pods (the pod range) and this host (its own address), so that the host's address
//! is no open resolver for its network.

use capstan_api::cidr::Cidr;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::{Duration, timeout};
use tokio_util::sync::CancellationToken;

use crate::model::SERVICE_NAME_LABEL;

/// How long clients may cache an answer; short, since endpoints come and go (CoreDNS: 30 s).
const TTL: u32 = 5;

/// The names the cluster answers, lower case and fully qualified without the final dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    pub domain: String,
    pub names: BTreeMap<String, Vec<Ipv4Addr>>,
    /// SRV names of named ports: (port, target name).
    pub services: BTreeMap<String, (u16, String)>,
}

/// The records for `services` (ready endpoints from `slices` for headless ones).
pub fn records<'a>(
    domain: &str,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice> + Clone,
) -> Records {
    let mut names = BTreeMap::new();
    let mut srv = BTreeMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let Some(name) = svc.metadata.name.as_deref() else { continue };
        let fqdn = format!("{name}.{ns}.svc.{domain}").to_lowercase();
        let mut ips: Vec<Ipv4Addr> = match spec.cluster_ip.as_deref() {
            Some("None") => {
                let ready = slices
                    .clone()
                    .into_iter()
                    .filter(|s| {
                        s.metadata.namespace.as_deref() == Some(ns)
                            && s.metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                                .map(String::as_str)
                                == Some(name)
                    })
                    .flat_map(|s| s.endpoints.iter())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true));
                let mut ips = Vec::new();
                for e in ready {
                    let addresses: Vec<Ipv4Addr> = e.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                    // A pod with a hostname under this Service (a StatefulSet's) has a name of
                    // its own: `<hostname>.<service>.<namespace>.svc.<domain>`.
                    if let Some(h) = e.hostname.as_deref().filter(|h| !h.is_empty()) {
                        let own: &mut Vec<Ipv4Addr> = names.entry(format!("{h}.{fqdn}").to_lowercase()).or_default();
                        own.extend(&addresses);
                    }
                    ips.extend(addresses);
                }
                ips
            }
            Some(ip) => ip.parse().into_iter().collect(),
            None => continue,
        };
        ips.sort();
        ips.dedup();
        for port in spec.ports.iter().flatten() {
            let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let protocol = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
            // A headless Service's port is its endpoints' port (the target port).
            let number = if spec.cluster_ip.as_deref() == Some("None") {
                match &port.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) => *p,
                    _ => port.port,
                }
            } else {
                port.port
            };
            if let Ok(number) = u16::try_from(number) {
                srv.insert(format!("_{port_name}._{protocol}.{fqdn}").to_lowercase(), (number, fqdn.clone()));
            }
        }
        names.insert(fqdn, ips);
    }
    Records {
        domain: domain.to_owned(),
        names,
        services: srv,
    }
}

/// The answer to one DNS message; None when it is not a query worth answering.
pub fn answer(request: &[u8], records: &Records, forwarding: bool) -> Option<Answer> {
    let query = Message::from_vec(request).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.authoritative = true;
    let code = match (query.metadata.op_code, query.queries.as_slice()) {
        (OpCode::Query, [q]) => {
            reply.add_query(q.clone());
            let name = q.name().to_lowercase().to_ascii();
            let name = name.trim_end_matches('.');
            let suffix = format!(".{}", records.domain);
            if !name.ends_with(&suffix) && name != records.domain {
                if forwarding {
                    return Some(Answer::Forward);
                }
                ResponseCode::Refused
            } else {
                match records.names.get(name) {
                    _ if records.services.contains_key(name) => {
                        let (port, target) = &records.services[name];
                        if matches!(q.query_type(), RecordType::SRV | RecordType::ANY)
                            && let Ok(target) = Name::from_ascii(format!("{target}."))
                        {
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                TTL,
                                RData::SRV(SRV::new(0, 100, *port, target)),
                            ));
                        }
                        ResponseCode::NoError
                    }
                    // The name exists: A records for an A (or ANY) query, an empty answer otherwise.
                    Some(ips) => {
                        if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                            for ip in ips {
                                reply.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(*ip))));
                            }
                        }
                        ResponseCode::NoError
                    }
                    None => ResponseCode::NXDomain,
                }
            }
        }
        (OpCode::Query, _) => ResponseCode::FormErr,
        _ => ResponseCode::NotImp,
    };
    reply.metadata.response_code = code;
    reply.to_vec().ok().map(Answer::Reply)
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Reply(Vec<u8>),
    /// A name outside the cluster, for the upstream resolver.
    Forward,
}

/// How long the upstream resolver may take (the client's own timeout is usually 5 s).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `upstream` over UDP; its answer, if it gave one for this query in time.
pub async fn forward(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await.ok()?.ok()?;
        // The same transaction id, or a stray datagram.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            return Some(buf[..n].to_vec());
        }
    }
}

/// The first `nameserver` of a resolv.conf.
pub fn resolv_conf_upstream(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.parse::<std::net::IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The answer to `query`: ours, or the upstream's for a name outside the cluster.
async fn respond(query: &[u8], records: &RwLock<Records>, upstream: Option<SocketAddr>) -> Option<Vec<u8>> {
    let outcome = answer(query, &records.read().expect("records lock"), upstream.is_some());
    match (outcome?, upstream) {
        (Answer::Reply(r), _) => Some(r),
        (Answer::Forward, Some(up)) => match forward(query, up).await {
            Some(r) => Some(r),
            None => failure(query),
        },
        (Answer::Forward, None) => None,
    }
}

/// SERVFAIL for `query`: the upstream did not answer.
fn failure(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut reply = Message::response(q.metadata.id, q.metadata.op_code);
    reply.metadata.recursion_desired = q.metadata.recursion_desired;
    for question in &q.queries {
        reply.add_query(question.clone());
    }
    reply.metadata.response_code = ResponseCode::ServFail;
    reply.to_vec().ok()
}

/// The sockets of a DNS server, bound.
#[derive(Debug)]
pub struct Server {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    upstream: Option<SocketAddr>,
    clients: Clients,
}

/// Who may ask: the server's own address (this host) and, if set, one range (the pods').
#[derive(Clone, Copy, Debug)]
struct Clients {
    own: IpAddr,
    range: Option<Cidr>,
}

impl Clients {
    fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        ip == self.own || matches!((ip, self.range), (IpAddr::V4(v4), Some(range)) if range.contains(v4))
    }
}

impl Server {
    /// Binds `addr`; only this address itself may ask until [`Server::answering`] adds a range.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Server> {
        Ok(Server {
            udp: Arc::new(UdpSocket::bind(addr).await?),
            tcp: TcpListener::bind(addr).await?,
            upstream: None,
            clients: Clients {
                own: addr.ip(),
                range: None,
            },
        })
    }

    /// Also answers clients in `range` (the pods).
    pub fn answering(self, range: Cidr) -> Server {
        Server {
            clients: Clients {
                range: Some(range),
                ..self.clients
            },
            ..self
        }
    }

    /// Names outside the cluster go to `upstream` (none: they are refused).
    pub fn forwarding_to(self, upstream: Option<SocketAddr>) -> Server {
        Server { upstream, ..self }
    }

    /// Answers from `records` over UDP and TCP until cancelled.
    pub async fn serve(self, records: Arc<RwLock<Records>>, cancel: CancellationToken) {
        if let Ok(addr) = self.tcp.local_addr() {
            tracing::info!("cluster DNS on {addr} (udp, tcp)");
        }
        let (upstream, clients) = (self.upstream, self.clients);
        if let Some(up) = upstream {
            tracing::info!("cluster DNS: names outside the cluster go to {up}");
        }
        let (udp, udp_records, udp_cancel) = (self.udp, records.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, from) = tokio::select! {
                    _ = udp_cancel.cancelled() => return,
                    r = udp.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
                };
                if !clients.allows(from.ip()) {
                    continue;
                }
                // Each query on its own task: an upstream answer may take a while.
                let (udp, records, query) = (udp.clone(), udp_records.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    if let Some(reply) = respond(&query, &records, upstream).await {
                        let _ = udp.send_to(&reply, from).await;
                    }
                });
            }
        });
        loop {
            let (mut stream, from) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.tcp.accept() => match r { Ok(r) => r, Err(_) => continue },
            };
            if !clients.allows(from.ip()) {
                continue;
            }
            let records = records.clone();
            tokio::spawn(async move {
                // Length-prefixed messages, as many as the client sends.
                loop {
                    let Ok(len) = stream.read_u16().await else { return };
                    let mut buf = vec![0u8; usize::from(len)];
                    if stream.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Some(reply) = respond(&buf, &records, upstream).await else {
                        return;
                    };
                    let Ok(len) = u16::try_from(reply.len()) else { return };
                    if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use serde_json::json;

    fn ask(name: &str, ty: RecordType, records: &Records) -> Message {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        let Some(Answer::Reply(reply)) = answer(&q.to_vec().unwrap(), records, false) else {
            panic!("no reply");
        };
        Message::from_vec(&reply).unwrap()
    }

    fn fixture() -> Records {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "redis", "namespace": "guestbook"},
            "spec": {"clusterIP": "10.96.0.44", "ports": [{"port": 6379, "name": "redis"}]}}))
        .unwrap();
        let headless: Service = serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "guestbook"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432, "name": "pg", "targetPort": 15432}]}}))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "db-1", "namespace": "guestbook",
                "labels": {SERVICE_NAME_LABEL: "db"}}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.9"]}, {"addresses": ["10.244.0.8"], "conditions": {"ready": true}},
                          {"addresses": ["10.244.0.7"], "conditions": {"ready": false}}]}))
        .unwrap();
        records("cluster.local", [&svc, &headless], [&slice])
    }

    #[test]
    fn services_resolve_to_their_cluster_ip_case_insensitively() {
        let r = ask("Redis.Guestbook.svc.cluster.local.", RecordType::A, &fixture());
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        let ips: Vec<_> = r.answers.iter().map(|a| a.data.clone()).collect();
        assert_eq!(ips, vec![RData::A(A("10.96.0.44".parse().unwrap()))]);
    }

    #[test]
    fn headless_services_resolve_to_ready_endpoints() {
        let r = ask("db.guestbook.svc.cluster.local.", RecordType::A, &fixture());
        let ips: Vec<_> = r.answers.iter().map(|a| a.data.clone()).collect();
        assert_eq!(
            ips,
            vec![
                RData::A(A("10.244.0.8".parse().unwrap())),
                RData::A(A("10.244.0.9".parse().unwrap()))
            ]
        );
    }

    #[test]
    fn pods_with_a_hostname_under_a_headless_service_have_names() {
        let headless: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "db"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "web-x", "namespace": "db",
                "labels": {SERVICE_NAME_LABEL: "web"}}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "hostname": "web-0"}, {"addresses": ["10.244.0.6"], "hostname": "web-1"}]}))
        .unwrap();
        let r = records("cluster.local", [&headless], [&slice]);
        let web1 = ask("web-1.web.db.svc.cluster.local.", RecordType::A, &r);
        let ips: Vec<_> = web1.answers.iter().map(|a| a.data.clone()).collect();
        assert_eq!(ips, vec![RData::A(A("10.244.0.6".parse().unwrap()))]);
        assert_eq!(ask("web.db.svc.cluster.local.", RecordType::A, &r).answers.len(), 2);
    }

    #[test]
    fn unknown_names_other_types_and_outside_names() {
        let f = fixture();
        // The search path tries `redis.guestbook.guestbook.svc.cluster.local` first: NXDOMAIN.
        assert_eq!(
            ask("redis.guestbook.guestbook.svc.cluster.local.", RecordType::A, &f)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        let aaaa = ask("redis.guestbook.svc.cluster.local.", RecordType::AAAA, &f);
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty(), "the name exists, with no IPv6 address");
        assert_eq!(ask("example.com.", RecordType::A, &f).metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn named_ports_have_srv_records() {
        let f = fixture();
        let r = ask("_redis._tcp.redis.guestbook.svc.cluster.local.", RecordType::SRV, &f);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let want = SRV::new(0, 100, 6379, Name::from_ascii("redis.guestbook.svc.cluster.local.").unwrap());
        assert_eq!(r.answers.iter().map(|a| a.data.clone()).collect::<Vec<_>>(), vec![RData::SRV(want)]);
        // A headless Service's SRV carries the endpoints' port.
        let r = ask("_pg._tcp.db.guestbook.svc.cluster.local.", RecordType::SRV, &f);
        assert!(matches!(&r.answers[0].data, RData::SRV(s) if s.port == 15432), "{:?}", r.answers);
        assert_eq!(
            ask("_nope._tcp.redis.guestbook.svc.cluster.local.", RecordType::SRV, &f)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn the_hosts_resolver_comes_from_resolv_conf() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n";
        assert_eq!(resolv_conf_upstream(text), Some("192.0.2.53:53".parse().unwrap()));
        assert_eq!(resolv_conf_upstream("search x\n"), None);
        let mut q = Message::new(9, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii("example.org.").unwrap(), RecordType::A));
        assert_eq!(answer(&q.to_vec().unwrap(), &fixture(), true), Some(Answer::Forward));
    }

    /// A resolver on loopback answering every A query with 192.0.2.123.
    async fn fake_upstream() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut reply = Message::response(q.metadata.id, q.metadata.op_code);
                let question = q.queries[0].clone();
                reply.add_answer(Record::from_rdata(question.name().clone(), 60, RData::A(A::new(192, 0, 2, 123))));
                reply.add_query(question);
                socket.send_to(&reply.to_vec().unwrap(), from).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn names_outside_the_cluster_are_answered_by_the_upstream() {
        let upstream = fake_upstream().await;
        let server = Server::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .forwarding_to(Some(upstream))
            .answering(capstan_api::cidr::POD_RANGE);
        let addr = server.udp.local_addr().unwrap();
        let records = Arc::new(RwLock::new(fixture()));
        tokio::spawn(server.serve(records, CancellationToken::new()));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |name: &str, id: u16| {
            let mut q = Message::new(id, MessageType::Query, OpCode::Query);
            q.metadata.recursion_desired = true;
            q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            q.to_vec().unwrap()
        };
        let mut buf = vec![0u8; 512];
        client.send_to(&ask("example.org.", 1), addr).await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.metadata.id, 1);
        assert_eq!(reply.answers[0].data, RData::A(A::new(192, 0, 2, 123)), "{reply:?}");
        // Cluster names are still ours.
        client.send_to(&ask("redis.guestbook.svc.cluster.local.", 2), addr).await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.answers[0].data, RData::A(A::new(10, 96, 0, 44)), "{reply:?}");
        // Another address (here another loopback one) is neither this host's own nor a pod's.
        let stranger = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        stranger.send_to(&ask("redis.guestbook.svc.cluster.local.", 4), addr).await.unwrap();
        let unanswered = timeout(Duration::from_millis(300), stranger.recv(&mut buf)).await;
        assert!(unanswered.is_err(), "a client outside the pod range is not answered");
        // An upstream that does not answer: SERVFAIL, not silence.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let bytes = ask("example.net.", 3);
        let failed = respond(&bytes, &RwLock::new(fixture()), Some(silent.local_addr().unwrap()))
            .await
            .unwrap();
        assert_eq!(Message::from_vec(&failed).unwrap().metadata.response_code, ResponseCode::ServFail);
    }
}
