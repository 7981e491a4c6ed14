//! A saved Python state on disk, in the workspace's `state/` folder (out of the guest's reach):
//!
//! ```text
//! manifest     what the state is: the runtime it belongs to, the memory size, its layers
//!              (a base, then up to four deltas), the hash of every page that differs from the
//!              runtime's image and the pages the deltas hold; replaced atomically, so it is
//!              the commit point of a save
//! layer-<n>    pages in blocks of up to 16: the base's LZ4-compressed (or stored as they are
//!              when that does not pay), the deltas' as they are
//! ```
//!
//! A restore applies the layers in order and checks every page against its hash, so a torn or
//! damaged file is found, never run. Everything read here is bounds-checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::super::pagemap::PAGE;

const MAGIC: &[u8; 16] = b"toolhost-state-2";
/// Pages per block: large enough to compress well, small enough to skip what a call left alone.
const BLOCK_PAGES: usize = 16;
const RAW: u8 = 0;
const LZ4: u8 = 1;
const BLOCK_HEADER: usize = 13;

/// What a state is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The runtime (snapshot) the pages are relative to.
    pub runtime: String,
    /// The linear memory's size.
    pub memory_bytes: u64,
    /// The number the next layer gets.
    pub next_layer: u64,
    /// Oldest first.
    pub layers: Vec<Layer>,
    /// Every page that differs from the runtime's image, with the hash of its content.
    pub pages: BTreeMap<u32, u128>,
    /// The pages the layers after the first hold.
    pub deltas: BTreeSet<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    pub id: u64,
    pub bytes: u64,
}

/// A state that cannot be used as it is on disk.
#[derive(Debug, thiserror::Error)]
pub enum Damaged {
    #[error("cannot read {0}: {1}")]
    Io(String, io::Error),
    #[error("{0} is damaged ({1})")]
    Format(String, &'static str),
}

impl Manifest {
    pub fn new(runtime: &str, memory_bytes: u64, next_layer: u64) -> Manifest {
        Manifest {
            runtime: runtime.to_string(),
            memory_bytes,
            next_layer,
            layers: Vec::new(),
            pages: BTreeMap::new(),
            deltas: BTreeSet::new(),
        }
    }

    /// Bytes on disk: the layers and the manifest.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes).sum::<u64>() + self.encode().len() as u64
    }

    /// Names this manifest's content.
    pub fn fingerprint(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.encode())
    }

    /// The manifest in `dir`; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, Damaged> {
        let path = dir.join("manifest");
        match fs::read(&path) {
            Ok(bytes) => {
                Manifest::decode(&bytes).map(Some).map_err(|why| Damaged::Format("the state's manifest".into(), why))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Damaged::Io(path.display().to_string(), e)),
        }
    }

    /// Replaces the manifest in `dir` atomically, then removes the layers it no longer lists.
    pub fn commit(&self, dir: &Path) -> io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(&self.encode())?;
        let written = file.into_temp_path();
        let target = dir.join("manifest");
        // Exchanged with the manifest it replaces, whose name is then removed, rather than
        // renamed over it: ext4 writes a file renamed over another out at once (auto_da_alloc),
        // which took five times as long as the whole commit. Renamed when there is none yet, or
        // where the filesystem cannot exchange.
        let exchanged = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &*written,
            rustix::fs::CWD,
            &target,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        if exchanged.is_err() {
            written.persist(&target).map_err(|e| e.error)?;
        }
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix("layer-")).and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if !self.layers.iter().any(|l| l.id == id) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.layers.len() * 16 + self.pages.len() * 20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.runtime.len() as u32).to_le_bytes());
        out.extend_from_slice(self.runtime.as_bytes());
        out.extend_from_slice(&self.memory_bytes.to_le_bytes());
        out.extend_from_slice(&self.next_layer.to_le_bytes());
        out.extend_from_slice(&(self.layers.len() as u32).to_le_bytes());
        for layer in &self.layers {
            out.extend_from_slice(&layer.id.to_le_bytes());
            out.extend_from_slice(&layer.bytes.to_le_bytes());
        }
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for (page, hash) in &self.pages {
            out.extend_from_slice(&page.to_le_bytes());
            out.extend_from_slice(&hash.to_le_bytes());
        }
        out.extend_from_slice(&(self.deltas.len() as u32).to_le_bytes());
        for page in &self.deltas {
            out.extend_from_slice(&page.to_le_bytes());
        }
        let check = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&check.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Manifest, &'static str> {
        let (body, check) = bytes.split_at_checked(bytes.len().saturating_sub(8)).ok_or("too short")?;
        if check.len() != 8
            || xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(check.try_into().unwrap_or_default())
        {
            return Err("its checksum does not match");
        }
        let mut reader = Reader(body);
        if reader.take(MAGIC.len())? != MAGIC {
            return Err("not a state manifest of this version");
        }
        let runtime_len = reader.u32()? as usize;
        let runtime = String::from_utf8(reader.take(runtime_len)?.to_vec()).map_err(|_| "runtime is not UTF-8")?;
        let memory_bytes = reader.u64()?;
        let next_layer = reader.u64()?;
        let mut layers = Vec::new();
        for _ in 0..reader.u32()? {
            layers.push(Layer { id: reader.u64()?, bytes: reader.u64()? });
        }
        let mut pages = BTreeMap::new();
        for _ in 0..reader.u32()? {
            let page = reader.u32()?;
            let hash = u128::from_le_bytes(reader.take(16)?.try_into().map_err(|_| "short hash")?);
            if (page as u64 + 1) * PAGE as u64 > memory_bytes {
                return Err("a page lies past the memory's end");
            }
            pages.insert(page, hash);
        }
        let mut deltas = BTreeSet::new();
        for _ in 0..reader.u32()? {
            let page = reader.u32()?;
            if !pages.contains_key(&page) {
                return Err("a delta page is not a page of the state");
            }
            deltas.insert(page);
        }
        if !reader.0.is_empty() {
            return Err("trailing bytes");
        }
        Ok(Manifest { runtime, memory_bytes, next_layer, layers, pages, deltas })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let (head, rest) = self.0.split_at_checked(n).ok_or("truncated")?;
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "truncated")?))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "truncated")?))
    }
}

/// Writes `pages` (sorted) of `memory` as layer `id` in `dir`, LZ4-compressed if `compress`;
/// returns its size in bytes.
pub fn write_layer(dir: &Path, id: u64, memory: &[u8], pages: &[u32], compress: bool) -> io::Result<u64> {
    let mut out = Vec::new();
    let mut compressed = vec![0u8; lz4_flex::block::get_maximum_output_size(BLOCK_PAGES * PAGE)];
    let mut i = 0;
    while i < pages.len() {
        // A run of consecutive pages, at most BLOCK_PAGES long.
        let first = pages[i];
        let mut count = 1;
        while i + count < pages.len() && count < BLOCK_PAGES && pages[i + count] == first + count as u32 {
            count += 1;
        }
        i += count;
        let start = first as usize * PAGE;
        let raw = &memory[start..start + count * PAGE];
        let packed = if compress {
            lz4_flex::block::compress_into(raw, &mut compressed).map_err(|e| io::Error::other(format!("LZ4: {e}")))?
        } else {
            raw.len()
        };
        // Stored as it is unless compression saves an eighth.
        let (kind, data) = if packed < raw.len() - raw.len() / 8 { (LZ4, &compressed[..packed]) } else { (RAW, raw) };
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&(count as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(data);
    }
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&out)?;
    file.persist(dir.join(format!("layer-{id}"))).map_err(|e| e.error)?;
    Ok(out.len() as u64)
}

/// Writes layer `id` of `dir` into `memory`.
pub fn apply_layer(dir: &Path, id: u64, memory: &mut [u8]) -> Result<(), Damaged> {
    let path = dir.join(format!("layer-{id}"));
    let bytes = fs::read(&path).map_err(|e| Damaged::Io(path.display().to_string(), e))?;
    let damaged = |why| Damaged::Format(format!("state layer {id}"), why);
    let mut reader = Reader(&bytes);
    while !reader.0.is_empty() {
        let header = reader.take(BLOCK_HEADER).map_err(damaged)?;
        let field =
            |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]) as usize;
        let (first, count, stored, kind) = (field(0), field(4), field(8), header[12]);
        let data = reader.take(stored).map_err(damaged)?;
        let start = first.checked_mul(PAGE).ok_or_else(|| damaged("a block's page is out of range"))?;
        let target = count
            .checked_mul(PAGE)
            .and_then(|len| memory.get_mut(start..start.checked_add(len)?))
            .filter(|target| !target.is_empty() && target.len() <= BLOCK_PAGES * PAGE)
            .ok_or_else(|| damaged("a block lies outside the memory"))?;
        match kind {
            RAW if data.len() == target.len() => target.copy_from_slice(data),
            LZ4 => match lz4_flex::block::decompress_into(data, target) {
                Ok(n) if n == target.len() => {}
                _ => return Err(damaged("a block does not decompress to its pages")),
            },
            _ => return Err(damaged("a block has an unknown kind or size")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_and_a_flipped_bit_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let mut manifest = Manifest::new("abc", 64 * PAGE as u64, 3);
        manifest.layers = vec![Layer { id: 1, bytes: 10 }, Layer { id: 2, bytes: 20 }];
        manifest.pages.insert(5, 0x1234);
        manifest.pages.insert(63, u128::MAX);
        manifest.deltas.insert(63);
        manifest.commit(dir.path()).expect("commit");
        assert_eq!(Manifest::read(dir.path()).expect("read"), Some(manifest.clone()));
        let path = dir.path().join("manifest");
        let mut bytes = fs::read(&path).expect("bytes");
        bytes[20] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(Manifest::read(dir.path()), Err(Damaged::Format(..))));
        assert!(Manifest::read(&dir.path().join("none")).expect("none").is_none());
    }

    #[test]
    fn layers_round_trip_and_bad_blocks_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let mut memory = vec![0u8; 40 * PAGE];
        for (i, byte) in memory.iter_mut().enumerate() {
            *byte = if i < 20 * PAGE { (i % 7) as u8 } else { (i.wrapping_mul(2654435761) >> 13) as u8 };
        }
        let pages: Vec<u32> = (0..18).chain(20..39).collect();
        write_layer(dir.path(), 1, &memory, &pages, true).expect("write");
        let mut restored = vec![0u8; 40 * PAGE];
        apply_layer(dir.path(), 1, &mut restored).expect("apply");
        for page in 0..40 {
            let range = page * PAGE..(page + 1) * PAGE;
            let expected = if pages.contains(&(page as u32)) { &memory[range.clone()] } else { &[0u8; PAGE][..] };
            assert_eq!(&restored[range], expected, "page {page}");
        }
        // Stored as they are, the same pages read back the same.
        write_layer(dir.path(), 2, &memory, &pages, false).expect("write");
        let mut raw = vec![0u8; 40 * PAGE];
        apply_layer(dir.path(), 2, &mut raw).expect("apply");
        assert_eq!(raw, restored);
        assert!(fs::metadata(dir.path().join("layer-2")).expect("layer").len() > (pages.len() * PAGE) as u64);
        // Into a smaller memory: refused, not written out of bounds.
        let mut small = vec![0u8; 10 * PAGE];
        assert!(matches!(apply_layer(dir.path(), 1, &mut small), Err(Damaged::Format(..))));
        // A truncated file.
        let path = dir.path().join("layer-1");
        let bytes = fs::read(&path).expect("bytes");
        fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        assert!(apply_layer(dir.path(), 1, &mut restored).is_err());
    }

    #[test]
    fn a_commit_removes_the_layers_it_no_longer_lists() {
        let dir = tempfile::tempdir().expect("dir");
        let memory = vec![1u8; 4 * PAGE];
        for id in [1, 2, 3] {
            write_layer(dir.path(), id, &memory, &[0, 1], id % 2 == 0).expect("write");
        }
        let mut manifest = Manifest::new("abc", memory.len() as u64, 4);
        manifest.layers = vec![Layer { id: 3, bytes: 1 }];
        manifest.commit(dir.path()).expect("commit");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().into_string().expect("utf8"))
            .collect();
        names.sort();
        assert_eq!(names, ["layer-3", "manifest"]);
    }
}
