//! eBPF for the node agent, with no compiler and no loader library: [`insn`] assembles programs
//! in Rust (a few dozen instructions each, checked by the kernel's verifier at load), [`sys`] makes
//! maps and programs through the bpf() system call, and [`tc`] attaches a program to an
//! interface's ingress hook (clsact) over route netlink.

pub mod insn;
pub mod sys;
pub mod tc;
