//! The eBPF instruction set, as far as the node's programs use it: an assembler with named labels
//! that encodes each instruction as the kernel reads it (8 bytes: opcode, registers, offset,
//! immediate; a 64-bit immediate takes two). Pure: the kernel's verifier is the judge of a program.

use std::collections::HashMap;

/// A register: r0 (return value, helper results), r1–r5 (helper arguments, clobbered by calls),
/// r6–r9 (kept across calls), r10 (the read-only frame pointer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg(pub u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R8: Reg = Reg(8);
pub const R9: Reg = Reg(9);
pub const FP: Reg = Reg(10);

/// The width of a load or store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B,
    H,
    W,
    DW,
}

impl Size {
    fn code(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::DW => 0x18,
        }
    }
}

/// A conditional jump's comparison (unsigned, on the whole 64-bit register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Eq,
    Ne,
    Gt,
    /// Any bit of the operand set.
    Set,
}

impl Cond {
    fn code(self) -> u8 {
        match self {
            Cond::Eq => 0x10,
            Cond::Gt => 0x20,
            Cond::Set => 0x40,
            Cond::Ne => 0x50,
        }
    }
}

/// Arithmetic operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Or,
    And,
    /// Logical shift right.
    Rsh,
    Xor,
    Mov,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Add => 0x00,
            Op::Sub => 0x10,
            Op::Or => 0x40,
            Op::And => 0x50,
            Op::Rsh => 0x70,
            Op::Xor => 0xa0,
            Op::Mov => 0xb0,
        }
    }
}

const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const MEM: u8 = 0x60;
const IMM: u8 = 0x00;
const SRC_REG: u8 = 0x08;
const END: u8 = 0xd0;
const TO_BE: u8 = 0x08;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit load whose immediate is a map's file descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// One encoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The 8 bytes the kernel reads (registers packed dst low, src high).
    pub fn bytes(&self) -> [u8; 8] {
        let mut b = [0; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("jump to label {0:?}, which is not defined")]
    Undefined(&'static str),
    #[error("label {0:?} defined twice")]
    Twice(&'static str),
    #[error("jump to label {0:?} is too far")]
    TooFar(&'static str),
}

/// A program being written: instructions and the labels jumps refer to.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<&'static str, usize>,
    jumps: Vec<(usize, &'static str)>,
    twice: Option<&'static str>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Asm {
        self.insns.push(Insn {
            code,
            dst: dst.0,
            src: src.0,
            off,
            imm,
        });
        self
    }

    /// `dst op= imm` on 64 bits.
    pub fn alu_imm(&mut self, op: Op, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ALU64 | op.code(), dst, R0, 0, imm)
    }

    /// `dst op= src` on 64 bits.
    pub fn alu(&mut self, op: Op, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ALU64 | op.code() | SRC_REG, dst, src, 0, 0)
    }

    /// `dst op= imm` on the low 32 bits (the result is zero-extended: sums wrap at 2^32).
    pub fn alu32_imm(&mut self, op: Op, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ALU | op.code(), dst, R0, 0, imm)
    }

    /// The low 32 bits of `dst` from network to host order (zero-extended).
    pub fn be32(&mut self, dst: Reg) -> &mut Asm {
        self.push(ALU | END | TO_BE, dst, R0, 0, 32)
    }

    /// The low 16 bits of `dst` between host and network order (zero-extended).
    pub fn be16(&mut self, dst: Reg) -> &mut Asm {
        self.push(ALU | END | TO_BE, dst, R0, 0, 16)
    }

    /// `dst = *(size *)(src + off)`.
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.push(LDX | MEM | size.code(), dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(STX | MEM | size.code(), dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Asm {
        self.push(ST | MEM | size.code(), dst, R0, off, imm)
    }

    /// `dst = imm` for a full 64-bit value (two instructions).
    pub fn load_imm64(&mut self, dst: Reg, imm: u64) -> &mut Asm {
        self.push(LD | IMM | Size::DW.code(), dst, R0, 0, imm as u32 as i32);
        self.push(0, R0, R0, 0, (imm >> 32) as u32 as i32)
    }

    /// `dst = the map with file descriptor fd` (the kernel swaps in the map's address).
    pub fn load_map(&mut self, dst: Reg, fd: i32) -> &mut Asm {
        self.push(LD | IMM | Size::DW.code(), dst, Reg(PSEUDO_MAP_FD), 0, fd);
        self.push(0, R0, R0, 0, 0)
    }

    /// `if dst cond imm goto label`.
    pub fn jump_imm(&mut self, cond: Cond, dst: Reg, imm: i32, label: &'static str) -> &mut Asm {
        self.jumps.push((self.insns.len(), label));
        self.push(JMP | cond.code(), dst, R0, 0, imm)
    }

    /// `if dst cond src goto label`.
    pub fn jump(&mut self, cond: Cond, dst: Reg, src: Reg, label: &'static str) -> &mut Asm {
        self.jumps.push((self.insns.len(), label));
        self.push(JMP | cond.code() | SRC_REG, dst, src, 0, 0)
    }

    /// `goto label`.
    pub fn goto(&mut self, label: &'static str) -> &mut Asm {
        self.jumps.push((self.insns.len(), label));
        self.push(JMP, R0, R0, 0, 0)
    }

    /// Calls kernel helper number `helper` (arguments in r1–r5, result in r0).
    pub fn call(&mut self, helper: i32) -> &mut Asm {
        self.push(JMP | CALL, R0, R0, 0, helper)
    }

    pub fn exit(&mut self) -> &mut Asm {
        self.push(JMP | EXIT, R0, R0, 0, 0)
    }

    /// Names the next instruction.
    pub fn label(&mut self, name: &'static str) -> &mut Asm {
        if self.labels.insert(name, self.insns.len()).is_some() {
            self.twice.get_or_insert(name);
        }
        self
    }

    /// The instructions, every jump resolved to its label.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        if let Some(name) = self.twice {
            return Err(AsmError::Twice(name));
        }
        for (at, label) in &self.jumps {
            let target = *self.labels.get(label).ok_or(AsmError::Undefined(label))?;
            let off = target as i64 - (*at as i64 + 1);
            self.insns[*at].off = i16::try_from(off).map_err(|_| AsmError::TooFar(label))?;
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_kernel_reads() {
        let mut a = Asm::new();
        a.alu_imm(Op::Mov, R0, 7)
            .load(Size::W, R2, R1, 76)
            .store_imm(Size::H, R2, 10, 0x1234)
            .jump_imm(Cond::Ne, R4, 0x45, "out")
            .be32(R4)
            .load_map(R1, 5)
            .label("out")
            .exit()
            .be16(R3)
            .alu_imm(Op::Rsh, R0, 17)
            .alu_imm(Op::Xor, R5, 0xffff)
            .alu(Op::Or, R0, R4);
        let bytes: Vec<[u8; 8]> = a.finish().unwrap().iter().map(Insn::bytes).collect();
        assert_eq!(bytes[0], [0xb7, 0x00, 0, 0, 7, 0, 0, 0]);
        assert_eq!(bytes[1], [0x61, 0x12, 76, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[2], [0x6a, 0x02, 10, 0, 0x34, 0x12, 0, 0]);
        // Jumps over the byte swap and the two halves of the map load.
        assert_eq!(bytes[3], [0x55, 0x04, 3, 0, 0x45, 0, 0, 0]);
        assert_eq!(bytes[4], [0xdc, 0x04, 0, 0, 32, 0, 0, 0]);
        assert_eq!(bytes[5], [0x18, 0x11, 0, 0, 5, 0, 0, 0]);
        assert_eq!(bytes[6], [0; 8]);
        assert_eq!(bytes[7], [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[8], [0xdc, 0x03, 0, 0, 16, 0, 0, 0]);
        assert_eq!(bytes[9], [0x77, 0x00, 0, 0, 17, 0, 0, 0]);
        assert_eq!(bytes[10], [0xa7, 0x05, 0, 0, 0xff, 0xff, 0, 0]);
        assert_eq!(bytes[11], [0x4f, 0x40, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn labels_must_exist_once() {
        let mut a = Asm::new();
        a.goto("nowhere").exit();
        assert_eq!(a.finish(), Err(AsmError::Undefined("nowhere")));
        let mut a = Asm::new();
        a.label("x").label("x").exit();
        assert_eq!(a.finish(), Err(AsmError::Twice("x")));
    }
}
