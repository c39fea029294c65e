//! The bpf() system call: maps (made, read, written, walked) and programs (loaded with the
//! verifier's log kept for the error, and run once on a packet for tests). Each object is a file
//! descriptor; the kernel frees it when the last holder (this process, an attached filter, a
//! program using a map) lets go.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::insn::Insn;

const MAP_CREATE: u32 = 0;
const MAP_LOOKUP_ELEM: u32 = 1;
const MAP_UPDATE_ELEM: u32 = 2;
const MAP_DELETE_ELEM: u32 = 3;
const MAP_GET_NEXT_KEY: u32 = 4;
const PROG_LOAD: u32 = 5;
const PROG_TEST_RUN: u32 = 10;

/// `BPF_PROG_TYPE_SCHED_CLS`: a tc classifier.
const PROG_TYPE_SCHED_CLS: u32 = 3;
/// Required of a longest-prefix-match map: its entries are allocated as they come.
const F_NO_PREALLOC: u32 = 1;

/// The kinds of map the node uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    /// A hash map that evicts the least recently used entry when full.
    LruHash = 9,
    /// Longest-prefix match: keys are a prefix length (u32, host order) and the address bytes.
    LpmTrie = 11,
}

#[allow(unsafe_code)] // the system call has no safe wrapper
fn bpf(cmd: u32, attr: &mut [u8]) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix of the size passed; the kernel
    // reads at most that many bytes and writes only output fields within it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Fields of `union bpf_attr`, written at their offsets.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn u32(&mut self, at: usize, v: u32) -> &mut Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(&mut self, at: usize, v: u64) -> &mut Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn name(&mut self, at: usize, name: &str) -> &mut Attr {
        // The kernel takes at most 15 characters and a NUL.
        let n = name.len().min(15);
        self.0[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }

    fn read_u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.0[at..at + 4].try_into().unwrap_or_default())
    }
}

fn ptr<T>(p: *const T) -> u64 {
    p as usize as u64
}

#[allow(unsafe_code)] // taking ownership of a descriptor the kernel returned
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// A map and the sizes of its keys and values.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key: usize,
    value: usize,
}

impl Map {
    pub fn create(kind: MapKind, name: &str, key: usize, value: usize, max_entries: u32) -> io::Result<Map> {
        let flags = if kind == MapKind::LpmTrie { F_NO_PREALLOC } else { 0 };
        let mut a = Attr::new();
        a.u32(0, kind as u32)
            .u32(4, key as u32)
            .u32(8, value as u32)
            .u32(12, max_entries)
            .u32(16, flags)
            .name(28, name);
        let fd = bpf(MAP_CREATE, &mut a.0[..48])?;
        Ok(Map { fd: owned(fd), key, value })
    }

    /// The descriptor a program's map load names.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn check(&self, key: &[u8], value: Option<&[u8]>) -> io::Result<()> {
        if key.len() != self.key || value.is_some_and(|v| v.len() != self.value) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "key or value of the wrong size for the map",
            ));
        }
        Ok(())
    }

    fn elem(&self, cmd: u32, key: &[u8], value: *const u8, flags: u64) -> io::Result<i64> {
        let mut a = Attr::new();
        a.u32(0, self.fd() as u32)
            .u64(8, ptr(key.as_ptr()))
            .u64(16, ptr(value))
            .u64(24, flags);
        bpf(cmd, &mut a.0[..32])
    }

    /// Writes `key` → `value` (made or replaced).
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.check(key, Some(value))?;
        self.elem(MAP_UPDATE_ELEM, key, value.as_ptr(), 0).map(|_| ())
    }

    /// Removes `key`; false when it was not there.
    pub fn delete(&self, key: &[u8]) -> io::Result<bool> {
        self.check(key, None)?;
        match self.elem(MAP_DELETE_ELEM, key, std::ptr::null(), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.check(key, None)?;
        let mut value = vec![0; self.value];
        match self.elem(MAP_LOOKUP_ELEM, key, value.as_mut_ptr(), 0) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every key in the map.
    pub fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut next = vec![0; self.key];
            // No key asks for the first one.
            let key = keys.last().map_or(std::ptr::null(), |k| k.as_ptr());
            let mut a = Attr::new();
            a.u32(0, self.fd() as u32).u64(8, ptr(key)).u64(16, ptr(next.as_mut_ptr()));
            match bpf(MAP_GET_NEXT_KEY, &mut a.0[..32]) {
                Ok(_) => keys.push(next),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A program the kernel refused, with what its verifier said.
#[derive(Debug, thiserror::Error)]
#[error("loading eBPF program {name}: {source}{}", if log.is_empty() { String::new() } else { format!("\nthe verifier said:\n{log}") })]
pub struct LoadError {
    pub name: String,
    #[source]
    pub source: io::Error,
    pub log: String,
}

/// A loaded program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
    name: String,
}

impl Program {
    /// Loads a tc classifier (GPL: the helpers it calls require it).
    pub fn classifier(name: &str, insns: &[Insn]) -> Result<Program, LoadError> {
        let code: Vec<u8> = insns.iter().flat_map(Insn::bytes).collect();
        let license = c"GPL";
        let load = |log: &mut [u8]| {
            let mut a = Attr::new();
            a.u32(0, PROG_TYPE_SCHED_CLS)
                .u32(4, insns.len() as u32)
                .u64(8, ptr(code.as_ptr()))
                .u64(16, ptr(license.as_ptr()))
                .u32(24, u32::from(!log.is_empty()))
                .u32(28, log.len() as u32)
                .u64(32, if log.is_empty() { 0 } else { ptr(log.as_mut_ptr()) })
                .name(48, name);
            bpf(PROG_LOAD, &mut a.0[..72])
        };
        match load(&mut []) {
            Ok(fd) => Ok(Program {
                fd: owned(fd),
                name: name.to_owned(),
            }),
            Err(source) => {
                // Again with the log on, for the error.
                let mut log = vec![0u8; 1 << 20];
                let _ = load(&mut log);
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                // The end of the log says why.
                let lines: Vec<&str> = text.lines().collect();
                let log = lines[lines.len().saturating_sub(30)..].join("\n");
                Err(LoadError {
                    name: name.to_owned(),
                    source,
                    log,
                })
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the program once on `packet` (an Ethernet frame) without sending anything:
    /// its return code and the packet as the program left it.
    pub fn test_run(&self, packet: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; packet.len() + 256];
        let mut a = Attr::new();
        a.u32(0, self.fd() as u32)
            .u32(8, packet.len() as u32)
            .u32(12, out.len() as u32)
            .u64(16, ptr(packet.as_ptr()))
            .u64(24, ptr(out.as_mut_ptr()))
            .u32(32, 1);
        bpf(PROG_TEST_RUN, &mut a.0[..80])?;
        let (ret, len) = (a.read_u32(4), a.read_u32(12) as usize);
        out.truncate(len);
        Ok((ret, out))
    }
}
