//! Programs on an interface's tc ingress hook, over route netlink: the `clsact` queueing
//! discipline (a hook point, it queues nothing) and one `bpf` filter in direct-action mode (the
//! program's return code is the verdict: pass, drop or redirect). Replacing the filter swaps the
//! program in one step, so a restarted agent takes over without a gap.

use std::io;

use capstan_netlink::rtnl::Rtnl;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::sys::Program;

/// clsact's handle (ffff:0) and parent (`TC_H_CLSACT`).
const CLSACT_HANDLE: u32 = 0xffff_0000;
const CLSACT_PARENT: u32 = 0xffff_fff1;
/// The ingress side of clsact (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`).
const INGRESS_PARENT: u32 = 0xffff_fff2;
/// Our filter's priority and handle on the hook: one filter, always the same, so that a
/// replacement finds it.
const PRIORITY: u32 = 1;
const HANDLE: u32 = 1;
/// `ETH_P_ALL` in network order: the filter sees every protocol.
const ALL_PROTOCOLS: u32 = 0x0300;

fn header(index: u32, handle: u32, parent: u32, info: u32) -> TcHeader {
    TcHeader {
        family: AddressFamily::Unspec,
        index: index as i32,
        handle: TcHandle::from(handle),
        parent: TcHandle::from(parent),
        info,
    }
}

fn clsact(index: u32) -> TcMessage {
    TcMessage::from_parts(
        header(index, CLSACT_HANDLE, CLSACT_PARENT, 0),
        vec![TcAttribute::Kind("clsact".into())],
    )
}

/// Runs `program` on every packet interface `index` receives (made or replaced).
pub fn attach_ingress(rtnl: &mut Rtnl, index: u32, program: &Program) -> io::Result<()> {
    match rtnl.request(RouteNetlinkMessage::NewQueueDiscipline(clsact(index)), NLM_F_CREATE | NLM_F_EXCL) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
        _ => {}
    }
    let options = [
        TcFilterBpfOption::ProgFd(program.fd() as u32),
        TcFilterBpfOption::ProgName(program.name().to_owned()),
        TcFilterBpfOption::Flags(TcBpfFlags::DirectAction),
    ]
    .into_iter()
    .map(TcOption::Bpf)
    .collect();
    let filter = TcMessage::from_parts(
        header(index, HANDLE, INGRESS_PARENT, (PRIORITY << 16) | ALL_PROTOCOLS),
        vec![TcAttribute::Kind("bpf".into()), TcAttribute::Options(options)],
    );
    rtnl.request(RouteNetlinkMessage::NewTrafficFilter(filter), NLM_F_CREATE | NLM_F_REPLACE)
        .map(|_| ())
}

/// Removes the hook and its filters from interface `index` (none there: nothing to do).
pub fn detach(rtnl: &mut Rtnl, index: u32) -> io::Result<()> {
    match rtnl.request(RouteNetlinkMessage::DelQueueDiscipline(clsact(index)), 0) {
        Err(e) if ![libc::ENOENT, libc::EINVAL, libc::ENODEV].contains(&e.raw_os_error().unwrap_or(0)) => Err(e),
        _ => Ok(()),
    }
}

/// Removes our filter from interface `index`'s ingress hook, if the program there is named
/// with `prefix`: the hook itself and others' filters stay (an interface we share, like the
/// host's own).
pub fn detach_ours(rtnl: &mut Rtnl, index: u32, prefix: &str) -> io::Result<()> {
    if !ingress_program(rtnl, index)?.is_some_and(|name| name.starts_with(prefix)) {
        return Ok(());
    }
    let filter = TcMessage::from_parts(
        header(index, HANDLE, INGRESS_PARENT, (PRIORITY << 16) | ALL_PROTOCOLS),
        vec![TcAttribute::Kind("bpf".into())],
    );
    match rtnl.request(RouteNetlinkMessage::DelTrafficFilter(filter), 0) {
        Err(e) if ![libc::ENOENT, libc::EINVAL, libc::ENODEV].contains(&e.raw_os_error().unwrap_or(0)) => Err(e),
        _ => Ok(()),
    }
}

/// The name of the program on interface `index`'s ingress hook, if any (for tests and checks).
pub fn ingress_program(rtnl: &mut Rtnl, index: u32) -> io::Result<Option<String>> {
    let get = TcMessage::from_parts(header(index, 0, INGRESS_PARENT, 0), vec![]);
    let answers = match rtnl.request(RouteNetlinkMessage::GetTrafficFilter(get), NLM_F_DUMP) {
        Err(e) if [libc::EINVAL, libc::ENOENT].contains(&e.raw_os_error().unwrap_or(0)) => return Ok(None),
        r => r?,
    };
    Ok(answers.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewTrafficFilter(f) => f.attributes.iter().find_map(|a| match a {
            TcAttribute::Options(o) => o.iter().find_map(|o| match o {
                TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    }))
}
