//! A minimal kext image writer for the verifier's unit tests: `__TEXT,__text`,
//! `__DATA,__data` holding `kmod_info`, `__LINKEDIT` with local relocations,
//! symbols, external (BRANCH) relocations and strings, laid out as ld -kext does.
//! It records where things are so tests can corrupt them precisely.

use crate::Arch;

pub struct Spec {
    pub arch: Arch,
    /// `__text` contents.
    pub code: Vec<u8>,
    /// Defined functions: (name, offset in `__text`).
    pub functions: Vec<(String, u64)>,
    /// Undefined symbols, in symbol-table order.
    pub undefined: Vec<String>,
    /// `call rel32` sites: (offset of the rel32 in `__text`, index into `undefined`).
    pub calls: Vec<(u64, usize)>,
    pub kmod_name: String,
    pub kmod_version: String,
    /// `__text` offsets of the start and stop functions.
    pub start: u64,
    pub stop: u64,
    /// File offset of `__text` (header padding test).
    pub text_offset: u64,
}

/// `push rbp; mov rbp, rsp; call <rel32 0>; xor eax, eax; pop rbp; ret` then
/// `xor eax, eax; ret`: start at 0 calls undefined symbol 0, stop at 0x10.
pub const START_STOP_CODE: [u8; 19] = [
    0x55, 0x48, 0x89, 0xe5, 0xe8, 0, 0, 0, 0, 0x31, 0xc0, 0x5d, 0xc3, 0xcc, 0xcc, 0xcc, //
    0x31, 0xc0, 0xc3,
];

impl Spec {
    /// A well-formed kext calling `undefined[0]` from `_prx_start`.
    pub fn good(arch: Arch, undefined: &[&str]) -> Spec {
        Spec {
            arch,
            code: START_STOP_CODE.to_vec(),
            functions: vec![("_prx_start".into(), 0), ("_prx_stop".into(), 0x10)],
            undefined: undefined.iter().map(|s| s.to_string()).collect(),
            calls: if undefined.is_empty() {
                vec![]
            } else {
                vec![(5, 0)]
            },
            kmod_name: "com.example.prx.test".into(),
            kmod_version: "1.2.3".into(),
            start: 0,
            stop: 0x10,
            text_offset: 0x400,
        }
    }
}

/// Where [`build`] put things (file offsets equal vm addresses).
pub struct Built {
    pub bytes: Vec<u8>,
    pub text_addr: u64,
    pub kmod_addr: u64,
    /// File offsets of the load commands, in order: __TEXT, __DATA, __LINKEDIT,
    /// LC_SYMTAB, LC_DYSYMTAB, LC_UUID, LC_SOURCE_VERSION.
    pub cmd_offsets: Vec<usize>,
    pub locrel_off: usize,
    pub extrel_off: usize,
    pub symoff: usize,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

struct W(Vec<u8>);
impl W {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    #[allow(clippy::too_many_arguments)]
    fn segment(
        &mut self,
        name: &str,
        vmaddr: u64,
        vmsize: u64,
        fileoff: u64,
        filesize: u64,
        prot: u32,
        nsects: u32,
    ) {
        self.u32(0x19).u32(72 + 80 * nsects).raw(&name16(name));
        self.u64(vmaddr)
            .u64(vmsize)
            .u64(fileoff)
            .u64(filesize)
            .u32(prot)
            .u32(prot)
            .u32(nsects)
            .u32(0);
    }
    #[allow(clippy::too_many_arguments)]
    fn section(
        &mut self,
        seg: &str,
        sect: &str,
        addr: u64,
        size: u64,
        offset: u64,
        align: u32,
        flags: u32,
    ) {
        self.raw(&name16(sect))
            .raw(&name16(seg))
            .u64(addr)
            .u64(size);
        self.u32(offset as u32)
            .u32(align)
            .u32(0)
            .u32(0)
            .u32(flags)
            .u32(0)
            .u32(0)
            .u32(0);
    }
}

pub fn build(spec: &Spec) -> Built {
    let page = spec.arch.page_size();
    let text_addr = spec.text_offset;
    let text_end = round_up(text_addr + spec.code.len() as u64, page);
    let data_addr = text_end;
    let data_size = 200u64;
    let link_addr = data_addr + page;
    let x86 = spec.arch == Arch::X86_64;

    // Symbols: extdefs (_kmod_info, functions), then undefined.
    let mut strtab = vec![b' ', 0];
    let mut syms = W(Vec::new());
    let mut add_sym = |name: &str, n_type: u8, n_sect: u8, desc: u16, value: u64| {
        syms.u32(strtab.len() as u32)
            .raw(&[n_type, n_sect])
            .raw(&desc.to_le_bytes())
            .u64(value);
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
    };
    add_sym("_kmod_info", 0x0f, 2, 0, data_addr);
    for (name, off) in &spec.functions {
        add_sym(name, 0x0f, 1, 0, text_addr + off);
    }
    let nextdef = 1 + spec.functions.len() as u32;
    for name in &spec.undefined {
        add_sym(name, 0x01, 0, 0xfe00, 0);
    }
    while strtab.len() % 8 != 0 {
        strtab.push(0);
    }
    let nsyms = nextdef + spec.undefined.len() as u32;

    let kmod_addr = data_addr;
    let mut locrel = W(Vec::new());
    let mut extrel = W(Vec::new());
    if x86 {
        for slot in [180u64, 188] {
            locrel.u32((kmod_addr + slot) as u32).u32(1 | (3 << 25)); // UNSIGNED, len 3, section 1
        }
        for &(off, undef) in &spec.calls {
            let info = (nextdef + undef as u32) | (1 << 24) | (2 << 25) | (1 << 27) | (2 << 28);
            extrel.u32((text_addr + off) as u32).u32(info);
        }
    }
    let locrel_off = link_addr as usize;
    let symoff = locrel_off + locrel.0.len();
    let extrel_off = symoff + syms.0.len();
    let stroff = extrel_off + extrel.0.len();
    let link_size = (stroff + strtab.len()) as u64 - link_addr;

    let (cputype, subtype) = if x86 {
        (0x0100_0007, 3)
    } else {
        (0x0100_000c, 0xC000_0002)
    };
    let mut cmds = W(Vec::new());
    let mut cmd_offsets = Vec::new();
    let mut mark = |cmds: &W| cmd_offsets.push(32 + cmds.0.len());
    mark(&cmds);
    cmds.segment("__TEXT", 0, text_end, 0, text_end, 5, 1);
    cmds.section(
        "__TEXT",
        "__text",
        text_addr,
        spec.code.len() as u64,
        text_addr,
        4,
        0x8000_0400,
    );
    mark(&cmds);
    cmds.segment("__DATA", data_addr, page, data_addr, page, 3, 1);
    cmds.section("__DATA", "__data", data_addr, data_size, data_addr, 3, 0);
    mark(&cmds);
    cmds.segment(
        "__LINKEDIT",
        link_addr,
        round_up(link_size, page),
        link_addr,
        link_size,
        1,
        0,
    );
    mark(&cmds);
    cmds.u32(2)
        .u32(24)
        .u32(symoff as u32)
        .u32(nsyms)
        .u32(stroff as u32)
        .u32(strtab.len() as u32);
    mark(&cmds);
    cmds.u32(0xb)
        .u32(80)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(nextdef)
        .u32(nextdef)
        .u32(spec.undefined.len() as u32);
    for _ in 0..8 {
        cmds.u32(0);
    }
    cmds.u32(extrel_off as u32).u32((extrel.0.len() / 8) as u32);
    cmds.u32(locrel_off as u32).u32((locrel.0.len() / 8) as u32);
    mark(&cmds);
    cmds.u32(0x1b).u32(24).raw(&[0x42; 16]);
    mark(&cmds);
    cmds.u32(0x2a).u32(16).u64(0);

    let mut out = W(Vec::new());
    out.u32(0xfeed_facf)
        .u32(cputype)
        .u32(subtype)
        .u32(11)
        .u32(7)
        .u32(cmds.0.len() as u32)
        .u32(0x85)
        .u32(0);
    out.raw(&cmds.0);
    out.0.resize(text_addr as usize, 0);
    out.raw(&spec.code);
    out.0.resize(data_addr as usize, 0);
    // kmod_info_t
    let mut name = [0u8; 64];
    name[..spec.kmod_name.len()].copy_from_slice(spec.kmod_name.as_bytes());
    let mut version = [0u8; 64];
    version[..spec.kmod_version.len()].copy_from_slice(spec.kmod_version.as_bytes());
    out.u64(0)
        .u32(1)
        .u32(0xffff_ffff)
        .raw(&name)
        .raw(&version)
        .u32(0xffff_ffff);
    out.u64(0).u64(0).u64(0).u64(0); // reference_list, address, size, hdr_size
    out.u64(text_addr + spec.start).u64(text_addr + spec.stop);
    out.0.resize(link_addr as usize, 0);
    out.raw(&locrel.0).raw(&syms.0).raw(&extrel.0).raw(&strtab);
    Built {
        bytes: out.0,
        text_addr,
        kmod_addr,
        cmd_offsets,
        locrel_off,
        extrel_off,
        symoff,
    }
}

/// A universal file from (cputype, cpusubtype, align, slice) entries.
pub fn fat(slices: &[(u32, u32, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xcafe_babe_u32.to_be_bytes());
    out.extend_from_slice(&(slices.len() as u32).to_be_bytes());
    let mut offset = 0x4000u32;
    let mut placed = Vec::new();
    for &(cputype, subtype, align, data) in slices {
        offset = offset.div_ceil(1 << align) * (1 << align);
        for v in [cputype, subtype, offset, data.len() as u32, align] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        placed.push((offset as usize, data));
        offset += data.len() as u32;
    }
    for (off, data) in placed {
        out.resize(off, 0);
        out.extend_from_slice(data);
    }
    out
}
