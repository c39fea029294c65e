//! Name resolution without libc's resolver (a static binary has no NSS): /etc/hosts, then A
//! queries over UDP to the resolv.conf name servers, with its search list and ndots, as a pod
//! resolves `web` to `web.shop.svc.cluster.local`.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::Duration;

struct ResolvConf {
    nameservers: Vec<IpAddr>,
    search: Vec<String>,
    ndots: usize,
}

fn resolv_conf() -> ResolvConf {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut conf = ResolvConf {
        nameservers: Vec::new(),
        search: Vec::new(),
        ndots: 1,
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => conf.nameservers.extend(words.next().and_then(|w| w.parse::<IpAddr>().ok())),
            Some("search") => conf.search = words.map(str::to_owned).collect(),
            Some("options") => {
                for w in words {
                    if let Some(n) = w.strip_prefix("ndots:") {
                        conf.ndots = n.parse().unwrap_or(1);
                    }
                }
            }
            _ => {}
        }
    }
    conf
}

fn from_hosts(name: &str) -> Option<IpAddr> {
    let text = std::fs::read_to_string("/etc/hosts").ok()?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let ip: IpAddr = w.next()?.parse().ok()?;
            w.any(|n| n == name).then_some(ip)
        })
        .find(IpAddr::is_ipv4)
}

/// Resolves `name` to an IPv4 address.
pub fn resolve(name: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Some(ip) = from_hosts(name) {
        return Ok(ip);
    }
    let conf = resolv_conf();
    if conf.nameservers.is_empty() {
        return Err(format!("cannot resolve {name}: no nameserver in /etc/resolv.conf"));
    }
    let absolute = name.ends_with('.');
    let mut candidates = Vec::new();
    if absolute || name.matches('.').count() >= conf.ndots {
        candidates.push(name.trim_end_matches('.').to_owned());
    }
    if !absolute {
        candidates.extend(conf.search.iter().map(|s| format!("{name}.{s}")));
        if name.matches('.').count() < conf.ndots {
            candidates.push(name.to_owned());
        }
    }
    for candidate in &candidates {
        for ns in &conf.nameservers {
            if let Ok(Some(ip)) = query(*ns, candidate) {
                return Ok(IpAddr::V4(ip));
            }
        }
    }
    Err(format!("cannot resolve {name} (tried {})", candidates.join(", ")))
}

fn query(server: IpAddr, name: &str) -> Result<Option<Ipv4Addr>, String> {
    let socket = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.split('.').filter(|l| !l.is_empty()) {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    socket.send_to(&packet, (server, 53)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
    parse_answer(&buf[..n], id)
}

fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)? as usize;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += 1 + len;
    }
}

fn parse_answer(msg: &[u8], id: u16) -> Result<Option<Ipv4Addr>, String> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err("bad answer".into());
    }
    if msg[3] & 0x0f != 0 {
        return Ok(None); // NXDOMAIN or another error code
    }
    let questions = u16::from_be_bytes([msg[4], msg[5]]);
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(msg, i).ok_or("truncated")? + 4;
    }
    for _ in 0..answers {
        i = skip_name(msg, i).ok_or("truncated")?;
        let rr = msg.get(i..i + 10).ok_or("truncated")?;
        let (rtype, len) = (u16::from_be_bytes([rr[0], rr[1]]), u16::from_be_bytes([rr[8], rr[9]]) as usize);
        i += 10;
        if rtype == 1 && len == 4 {
            let d = msg.get(i..i + 4).ok_or("truncated")?;
            return Ok(Some(Ipv4Addr::new(d[0], d[1], d[2], d[3])));
        }
        i += len;
    }
    Ok(None)
}
