//! The component package's `Bom` (bill of materials): a "BOMStore" file listing
//! every installed path with its type, mode, owner, group, mtime, size and
//! checksum. Installer records it as the receipt (`pkgutil --files`, `lsbom`).
//!
//! Written by prx because `apple-bom`'s writer is broken. The layout follows
//! hogliux/bomutils (`src/bom.h`); all integers are big-endian:
//!
//! ```text
//! 0     header (512 bytes): "BOMStore", version 1, number of non-null blocks,
//!       index offset/length, vars offset (512)/length
//! 512   vars: count, then { block index u32, name length u8, name (no NUL) }
//!       for BomInfo, Paths, HLIndex, VIndex, Size64
//! ...   block contents, one after another
//! index block table: count, { address u32, length u32 } per block (block 0 is
//!       null), then the free list: count 0 and two null pointers
//! ```
//!
//! `Paths` is a B-tree ("tree" record → leaf/branch "paths" blocks). A leaf holds
//! at most 256 `{PathInfo1, File}` pairs: PathInfo1 = { id, PathInfo2 block },
//! PathInfo2 = { type, 1, architecture, mode, uid, gid, mtime, size, 1,
//! checksum, link-name length, link name }, File = { parent id, base name NUL }.
//! Ids are given breadth-first (children sorted by name), so the leaves are in
//! (parent id, name) order; `.` has parent 0.

use std::collections::BTreeMap;

use crate::pkg::tree::{EntryKind, PayloadTree};

const HEADER_SIZE: usize = 512;
const LEAF_CAPACITY: usize = 256;
/// PathInfo2 type codes.
const TYPE_FILE: u8 = 1;
const TYPE_DIR: u8 = 2;
/// The `architecture` field, as bomutils' mkbom writes it for every path.
const ARCHITECTURE: u16 = 3;

/// Blocks and named variables, laid out by [`Store::finish`].
struct Store {
    /// Block 0 is the null block.
    blocks: Vec<Vec<u8>>,
    vars: Vec<(&'static str, u32)>,
}

impl Store {
    fn new() -> Store {
        Store {
            blocks: vec![Vec::new()],
            vars: Vec::new(),
        }
    }

    fn add(&mut self, data: Vec<u8>) -> u32 {
        self.blocks.push(data);
        (self.blocks.len() - 1) as u32
    }

    fn var(&mut self, name: &'static str, data: Vec<u8>) {
        let id = self.add(data);
        self.vars.push((name, id));
    }

    fn finish(self) -> Vec<u8> {
        let mut vars = Vec::new();
        vars.extend_from_slice(&(self.vars.len() as u32).to_be_bytes());
        for (name, id) in &self.vars {
            vars.extend_from_slice(&id.to_be_bytes());
            vars.push(name.len() as u8);
            vars.extend_from_slice(name.as_bytes());
        }
        let mut data = Vec::new();
        let mut pointers = Vec::new();
        let mut at = HEADER_SIZE + vars.len();
        for b in &self.blocks {
            if b.is_empty() {
                pointers.push((0u32, 0u32));
            } else {
                pointers.push((at as u32, b.len() as u32));
                at += b.len();
                data.extend_from_slice(b);
            }
        }
        let mut index = Vec::new();
        index.extend_from_slice(&(pointers.len() as u32).to_be_bytes());
        for (addr, len) in &pointers {
            index.extend_from_slice(&addr.to_be_bytes());
            index.extend_from_slice(&len.to_be_bytes());
        }
        // Free list: no entries, two null pointers (as mkbom writes it).
        index.extend_from_slice(&0u32.to_be_bytes());
        index.extend_from_slice(&[0u8; 16]);

        let index_offset = at;
        let mut out = Vec::with_capacity(index_offset + index.len());
        out.extend_from_slice(b"BOMStore");
        out.extend_from_slice(&1u32.to_be_bytes());
        let non_null = self.blocks.iter().filter(|b| !b.is_empty()).count() as u32;
        out.extend_from_slice(&non_null.to_be_bytes());
        out.extend_from_slice(&(index_offset as u32).to_be_bytes());
        out.extend_from_slice(&(index.len() as u32).to_be_bytes());
        out.extend_from_slice(&(HEADER_SIZE as u32).to_be_bytes());
        out.extend_from_slice(&(vars.len() as u32).to_be_bytes());
        out.resize(HEADER_SIZE, 0);
        out.extend_from_slice(&vars);
        out.extend_from_slice(&data);
        out.extend_from_slice(&index);
        out
    }
}

/// A "tree" record pointing at `child`.
fn tree_record(child: u32, block_size: u32, path_count: u32) -> Vec<u8> {
    let mut t = Vec::with_capacity(21);
    t.extend_from_slice(b"tree");
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&child.to_be_bytes());
    t.extend_from_slice(&block_size.to_be_bytes());
    t.extend_from_slice(&path_count.to_be_bytes());
    t.push(0);
    t
}

/// A "paths" node: is-leaf, count, forward, backward, then (index0, index1) pairs.
fn paths_node(leaf: bool, forward: u32, backward: u32, pairs: &[(u32, u32)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + 8 * pairs.len());
    p.extend_from_slice(&u16::from(leaf).to_be_bytes());
    p.extend_from_slice(&(pairs.len() as u16).to_be_bytes());
    p.extend_from_slice(&forward.to_be_bytes());
    p.extend_from_slice(&backward.to_be_bytes());
    for (a, b) in pairs {
        p.extend_from_slice(&a.to_be_bytes());
        p.extend_from_slice(&b.to_be_bytes());
    }
    p
}

/// The POSIX `cksum` CRC (polynomial 0x04C11DB7, length appended, complemented):
/// the checksum Apple's BOMs record for files.
pub fn posix_cksum(data: &[u8]) -> u32 {
    fn step(crc: u32, byte: u8) -> u32 {
        let mut c = crc ^ (u32::from(byte) << 24);
        for _ in 0..8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
        }
        c
    }
    let mut crc = data.iter().fold(0u32, |c, &b| step(c, b));
    let mut len = data.len() as u64;
    while len != 0 {
        crc = step(crc, len as u8);
        len >>= 8;
    }
    !crc
}

/// The `Bom` of `tree`.
pub fn write(tree: &PayloadTree) -> Vec<u8> {
    // Children by parent path; `.`'s parent is the synthetic root "".
    let mut children: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in tree.entries.iter().enumerate() {
        let parent = match e.path.rfind('/') {
            Some(p) => &e.path[..p],
            None => "",
        };
        children.entry(parent).or_default().push(i);
    }
    for list in children.values_mut() {
        list.sort_by(|&a, &b| {
            base_name(&tree.entries[a].path).cmp(base_name(&tree.entries[b].path))
        });
    }
    // Breadth-first: (entry index, parent id); ids are positions + 1.
    let mut order: Vec<(usize, u32)> = Vec::with_capacity(tree.entries.len());
    let mut queue: std::collections::VecDeque<(&str, u32)> = [("", 0)].into();
    while let Some((path, id)) = queue.pop_front() {
        for &i in children.get(path).map(Vec::as_slice).unwrap_or(&[]) {
            order.push((i, id));
            queue.push_back((tree.entries[i].path.as_str(), order.len() as u32));
        }
    }

    let mut store = Store::new();
    let n = order.len();
    let mut bom_info = Vec::new();
    bom_info.extend_from_slice(&1u32.to_be_bytes());
    bom_info.extend_from_slice(&(n as u32 + 1).to_be_bytes());
    bom_info.extend_from_slice(&u32::from(n != 0).to_be_bytes());
    if n != 0 {
        bom_info.extend_from_slice(&[0u8; 16]);
    }
    store.var("BomInfo", bom_info);

    // Leaves of at most LEAF_CAPACITY pairs.
    let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(n);
    for (pos, &(i, parent)) in order.iter().enumerate() {
        let e = &tree.entries[i];
        let (kind, size, checksum) = match &e.kind {
            EntryKind::Dir => (TYPE_DIR, 0u32, 0u32),
            EntryKind::File(d) => (TYPE_FILE, d.len() as u32, posix_cksum(d)),
        };
        let mut info2 = Vec::with_capacity(31);
        info2.push(kind);
        info2.push(1);
        info2.extend_from_slice(&ARCHITECTURE.to_be_bytes());
        info2.extend_from_slice(&(e.st_mode() as u16).to_be_bytes());
        info2.extend_from_slice(&e.uid.to_be_bytes());
        info2.extend_from_slice(&e.gid.to_be_bytes());
        info2.extend_from_slice(&e.mtime.to_be_bytes());
        info2.extend_from_slice(&size.to_be_bytes());
        info2.push(1);
        info2.extend_from_slice(&checksum.to_be_bytes());
        info2.extend_from_slice(&0u32.to_be_bytes()); // no link name
        let info2_id = store.add(info2);
        let mut info1 = Vec::with_capacity(8);
        info1.extend_from_slice(&(pos as u32 + 1).to_be_bytes());
        info1.extend_from_slice(&info2_id.to_be_bytes());
        let info1_id = store.add(info1);
        let mut file = Vec::new();
        file.extend_from_slice(&parent.to_be_bytes());
        file.extend_from_slice(base_name(&e.path).as_bytes());
        file.push(0);
        let file_id = store.add(file);
        pairs.push((info1_id, file_id));
    }
    let chunks: Vec<&[(u32, u32)]> = if pairs.is_empty() {
        vec![&[]]
    } else {
        pairs.chunks(LEAF_CAPACITY).collect()
    };
    // Leaf block ids are allocated in order so the sibling links can be set.
    let first = store.blocks.len() as u32;
    let leaf_ids: Vec<u32> = (0..chunks.len() as u32).map(|k| first + k).collect();
    for (k, chunk) in chunks.iter().enumerate() {
        let forward = leaf_ids.get(k + 1).copied().unwrap_or(0);
        let backward = if k == 0 { 0 } else { leaf_ids[k - 1] };
        store.add(paths_node(true, forward, backward, chunk));
    }
    let root = if chunks.len() == 1 {
        leaf_ids[0]
    } else {
        let branch: Vec<(u32, u32)> = chunks
            .iter()
            .zip(&leaf_ids)
            .map(|(chunk, &leaf)| (leaf, chunk.last().map_or(0, |p| p.1)))
            .collect();
        store.add(paths_node(false, 0, 0, &branch))
    };
    store.var("Paths", tree_record(root, 4096, n as u32));

    // Empty hard-link index, VIndex and Size64 trees.
    let empty = paths_node(true, 0, 0, &[]);
    let hl = store.add(empty.clone());
    store.var("HLIndex", tree_record(hl, 4096, 0));
    let v = store.add(empty.clone());
    let vtree = store.add(tree_record(v, 128, 0));
    let mut vindex = Vec::with_capacity(13);
    vindex.extend_from_slice(&1u32.to_be_bytes());
    vindex.extend_from_slice(&vtree.to_be_bytes());
    vindex.extend_from_slice(&0u32.to_be_bytes());
    vindex.push(0);
    store.var("VIndex", vindex);
    let s = store.add(empty);
    store.var("Size64", tree_record(s, 4096, 0));
    store.finish()
}

/// One path of a BOM, as [`read`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BomPath {
    /// `.` or `./a/b`.
    pub path: String,
    /// Full mode (type bits + permissions).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (0 for directories).
    pub size: u32,
    /// POSIX cksum of files (0 for directories).
    pub checksum: u32,
}

/// Reads the `Paths` tree of a BOM (used by the install check; the tests use
/// their own reader). Errors name what is malformed.
pub fn read(bom: &[u8]) -> Result<Vec<BomPath>, String> {
    let u32_at = |o: usize| -> Result<u32, String> {
        bom.get(o..o + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("BOM truncated at {o}"))
    };
    if bom.get(..8) != Some(b"BOMStore".as_slice()) {
        return Err("not a BOM (no BOMStore magic)".into());
    }
    let index = u32_at(16)? as usize;
    let vars = u32_at(24)? as usize;
    let block = |id: u32| -> Result<&[u8], String> {
        let at = index + 4 + 8 * id as usize;
        let (addr, len) = (u32_at(at)? as usize, u32_at(at + 4)? as usize);
        bom.get(addr..addr + len)
            .ok_or_else(|| format!("BOM block {id} out of range"))
    };
    let mut at = vars + 4;
    let mut paths_block = None;
    for _ in 0..u32_at(vars)? {
        let id = u32_at(at)?;
        let len = *bom.get(at + 4).ok_or("BOM vars truncated")? as usize;
        let name = bom.get(at + 5..at + 5 + len).ok_or("BOM vars truncated")?;
        if name == b"Paths" {
            paths_block = Some(id);
        }
        at += 5 + len;
    }
    let tree = block(paths_block.ok_or("BOM has no Paths")?)?;
    let be32 = |b: &[u8], o: usize| -> Result<u32, String> {
        b.get(o..o + 4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
            .ok_or_else(|| "BOM record truncated".to_string())
    };
    let mut node = block(be32(tree, 8)?)?;
    // Descend to the first leaf.
    while node.get(..2) == Some(&[0, 0]) {
        node = block(be32(node, 12)?)?;
    }
    let mut names: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
    let mut out = Vec::new();
    loop {
        let count = u16::from_be_bytes([node[2], node[3]]) as usize;
        for k in 0..count {
            let info1 = block(be32(node, 12 + 8 * k)?)?;
            let file = block(be32(node, 16 + 8 * k)?)?;
            let id = be32(info1, 0)?;
            let info2 = block(be32(info1, 4)?)?;
            let parent = be32(file, 0)?;
            let name = String::from_utf8_lossy(&file[4..file.len().saturating_sub(1)]).to_string();
            let path = match names.get(&parent) {
                Some(p) => format!("{p}/{name}"),
                None if parent == 0 => name,
                None => return Err(format!("BOM path {name}: unknown parent {parent}")),
            };
            names.insert(id, path.clone());
            if info2.len() < 31 {
                return Err(format!("BOM path {path}: PathInfo2 truncated"));
            }
            out.push(BomPath {
                path,
                mode: u16::from_be_bytes([info2[4], info2[5]]),
                uid: be32(info2, 6)?,
                gid: be32(info2, 10)?,
                size: be32(info2, 18)?,
                checksum: be32(info2, 23)?,
            });
        }
        let forward = be32(node, 4)?;
        if forward == 0 {
            break;
        }
        node = block(forward)?;
    }
    Ok(out)
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cksum_matches_posix() {
        // `printf '' | cksum` and `printf 'hello\n' | cksum`.
        assert_eq!(posix_cksum(b""), 4294967295);
        assert_eq!(posix_cksum(b"hello\n"), 3015617425);
    }
}
