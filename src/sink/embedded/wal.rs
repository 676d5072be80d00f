//! Reading the engine's write-ahead log, to replay it after a crash.
//!
//! qdrant-edge 0.7.1 writes every update to its WAL (`<collection>/wal/`) before applying it,
//! but when it opens a collection it neither replays the WAL nor truncates it: whatever a
//! process killed in the middle of a flush left in the segments is what it serves. Qdrant
//! itself replays the WAL at start; this module reads it so that the embedded sink can do
//! the same ([`super::EmbeddedSink`] replays everything after its last checkpoint).
//!
//! The format is the one of Qdrant's `wal` crate (vendored in qdrant-edge): segment files
//! `closed-<first index>` (full) and `open-<n>` (being written, or pre-allocated and empty),
//! each an 8-byte header — `wal`, format version 0, a `u32` CRC seed — followed by entries:
//! a `u64` length, the data, zero padding to 4 mod 8, and a CRC-32C chained from the
//! previous entry's (or the seed). An entry whose CRC does not match ends the segment (a
//! torn last append). The data is a CBOR-encoded update operation.

use std::path::{Path, PathBuf};

use qdrant_edge::UpdateOperation;

/// Where the WAL stands: entries are numbered like the engine numbers them (a closed
/// segment's file name is its first entry's number; the open segment continues the last
/// closed one, or starts at 0).
#[derive(Debug, Default)]
pub struct WalTail {
    /// The number after the last entry.
    pub end: u64,
    /// The entries at or after the requested position, in order, with their numbers,
    /// still encoded.
    pub records: Vec<(u64, Vec<u8>)>,
}

impl WalTail {
    /// Decode the records (CBOR, as the engine writes them).
    pub fn operations(&self) -> Result<Vec<UpdateOperation>, String> {
        self.records
            .iter()
            .map(|(i, r)| serde_cbor::from_slice(r).map_err(|e| format!("WAL entry {i} does not decode: {e}")))
            .collect()
    }
}

fn invalid(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

/// The entries of one segment file, in order.
fn segment_entries(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    const HEADER: usize = 8;
    const CRC: usize = 4;
    let bytes = std::fs::read(path)?;
    let capacity = bytes.len() & !7;
    if capacity < HEADER || &bytes[0..3] != b"wal" {
        return Err(invalid(path, "not a WAL segment"));
    }
    if bytes[3] != 0 {
        return Err(invalid(path, &format!("WAL segment format {} is not supported", bytes[3])));
    }
    let mut crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let mut offset = HEADER;
    let mut out = Vec::new();
    while offset + HEADER + CRC < capacity {
        let len = u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap_or_default()) as usize;
        let padded = len.saturating_add(4usize.wrapping_sub(len) & 7);
        let Some(end) = offset.checked_add(HEADER + padded + CRC).filter(|e| *e <= capacity) else {
            break;
        };
        let computed = crc32c::crc32c_append(!crc.reverse_bits(), &bytes[offset..offset + HEADER + padded]);
        let stored = u32::from_le_bytes(bytes[end - CRC..end].try_into().unwrap_or_default());
        if computed != stored {
            break;
        }
        crc = computed;
        out.push(bytes[offset + HEADER..offset + HEADER + len].to_vec());
        offset = end;
    }
    Ok(out)
}

/// The entries numbered `from` or later of the WAL in `dir`, and where it ends.
pub fn tail(dir: &Path, from: u64) -> std::io::Result<WalTail> {
    let mut closed: Vec<(u64, PathBuf)> = Vec::new();
    let mut open: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        match name.split_once('-') {
            Some(("closed", n)) => closed.push((n.parse().map_err(|_| invalid(&path, "bad segment name"))?, path)),
            Some(("open", n)) => open.push((n.parse().map_err(|_| invalid(&path, "bad segment name"))?, path)),
            _ => {}
        }
    }
    closed.sort();
    open.sort();
    let mut out = WalTail::default();
    let mut next = closed.first().map_or(0, |(s, _)| *s);
    for (i, (start, path)) in closed.iter().enumerate() {
        if *start != next {
            return Err(invalid(path, &format!("WAL entries {next} to {start} are missing")));
        }
        // A closed segment followed by another needs reading only if it reaches `from`.
        if let Some((following, _)) = closed.get(i + 1) {
            if *following <= from {
                next = *following;
                continue;
            }
        }
        next = start + take(&mut out, *start, segment_entries(path)?, from);
    }
    // Open segments in order; the engine closes all but the last written one at its next
    // open, so each written one continues the numbering.
    for (_, path) in &open {
        let entries = segment_entries(path)?;
        if entries.is_empty() {
            continue;
        }
        next += take(&mut out, next, entries, from);
    }
    out.end = next;
    Ok(out)
}

/// Make the WAL in `dir` durable up to its last append, without touching the segments:
/// fsync every open segment file (the engine writes them through a shared memory map,
/// whose dirty pages `fsync` writes back) and every closed one not synced before —
/// `synced` is the first number of the newest closed segment already synced, updated here.
/// A segment closed since is renamed from an open one, so the directory is synced too.
/// Call it with no write to the engine in progress.
pub fn sync(dir: &Path, synced: &mut Option<u64>) -> std::io::Result<()> {
    let mut newest_closed = *synced;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let closed = match name.split_once('-') {
            Some(("open", _)) => None,
            Some(("closed", n)) => match n.parse::<u64>() {
                Ok(n) if synced.is_none_or(|s| n > s) => Some(n),
                _ => continue,
            },
            _ => continue,
        };
        // Only appends retire (rename) a segment: the caller holds the engine's writes.
        std::fs::File::open(&path)?.sync_data()?;
        if let Some(n) = closed {
            newest_closed = newest_closed.max(Some(n));
        }
    }
    if newest_closed != *synced {
        std::fs::File::open(dir)?.sync_all()?;
        *synced = newest_closed;
    }
    Ok(())
}

/// Keep the entries numbered `from` or later of a segment whose first entry is `start`;
/// returns how many entries the segment holds.
fn take(out: &mut WalTail, start: u64, entries: Vec<Vec<u8>>, from: u64) -> u64 {
    let n = entries.len() as u64;
    out.records.extend(entries.into_iter().enumerate().map(|(i, e)| (start + i as u64, e)).filter(|(i, _)| *i >= from));
    n
}

/// Delete the closed segments of the WAL in `dir` whose entries are all numbered below
/// `below` (the engine never truncates its WAL), keeping the last closed segment so that
/// the numbering stays where it is. Only while the engine has the WAL closed. Returns how
/// many segments were deleted.
pub fn prune(dir: &Path, below: u64) -> std::io::Result<usize> {
    let mut closed: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(start) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("closed-"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            closed.push((start, path));
        }
    }
    closed.sort();
    let mut deleted = 0;
    for pair in closed.windows(2) {
        // Entries of pair[0] are numbered below pair[1]'s first.
        if pair[1].0 <= below {
            std::fs::remove_file(&pair[0].1)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A segment file in the engine's format, `capacity` bytes, holding `entries`.
    fn write_segment(path: &Path, seed: u32, entries: &[&[u8]], capacity: usize) {
        let mut bytes = b"wal\0".to_vec();
        bytes.extend(seed.to_le_bytes());
        let mut crc = seed;
        for e in entries {
            let start = bytes.len();
            bytes.extend((e.len() as u64).to_le_bytes());
            bytes.extend(*e);
            bytes.resize(bytes.len() + (4usize.wrapping_sub(e.len()) & 7), 0);
            crc = crc32c::crc32c_append(!crc.reverse_bits(), &bytes[start..]);
            bytes.extend(crc.to_le_bytes());
        }
        bytes.resize(capacity, 0);
        std::fs::write(path, bytes).unwrap();
    }

    fn names(t: &WalTail) -> Vec<String> {
        t.records.iter().map(|(_, r)| String::from_utf8(r.clone()).unwrap()).collect()
    }

    #[test]
    fn numbering_across_closed_and_open_segments_and_a_torn_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_segment(&d.join("closed-0"), 7, &[b"a", b"bb", b"ccc"], 256);
        write_segment(&d.join("closed-3"), 9, &[b"dddd", b"eeeee"], 256);
        write_segment(&d.join("open-4"), 11, &[b"f", b"gg"], 256);
        write_segment(&d.join("open-5"), 13, &[], 256);
        let all = tail(d, 0).unwrap();
        assert_eq!(all.end, 7);
        assert_eq!(names(&all), ["a", "bb", "ccc", "dddd", "eeeee", "f", "gg"]);
        assert_eq!(names(&tail(d, 4).unwrap()), ["eeeee", "f", "gg"]);
        let none = tail(d, u64::MAX).unwrap();
        assert_eq!((none.end, none.records.len()), (7, 0));

        // A torn last append (its CRC does not match) ends the segment.
        let open = d.join("open-4");
        let mut bytes = std::fs::read(&open).unwrap();
        let second = 8 + 8 + 4 + 4; // header, then "f": length, data and padding, CRC
        bytes[second + 8] ^= 0xff;
        std::fs::write(&open, bytes).unwrap();
        let torn = tail(d, 5).unwrap();
        assert_eq!((torn.end, names(&torn)), (6, vec!["f".to_string()]));

        // A gap between closed segments is an error, not a silent skip.
        std::fs::remove_file(d.join("closed-3")).unwrap();
        write_segment(&d.join("closed-4"), 9, &[b"x"], 256);
        assert!(tail(d, 0).unwrap_err().to_string().contains("entries 3 to 4 are missing"));
    }

    #[test]
    fn prune_keeps_what_the_checkpoint_has_not_passed_and_the_last_closed_segment() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_segment(&d.join("closed-0"), 1, &[b"a", b"b"], 128);
        write_segment(&d.join("closed-2"), 2, &[b"c", b"d"], 128);
        write_segment(&d.join("closed-4"), 3, &[b"e"], 128);
        write_segment(&d.join("open-9"), 4, &[b"f"], 128);
        assert_eq!(prune(d, 3).unwrap(), 1, "closed-0 only: closed-2 holds entry 3");
        assert_eq!(names(&tail(d, 2).unwrap()), ["c", "d", "e", "f"]);
        assert_eq!(prune(d, 100).unwrap(), 1, "the last closed segment stays");
        let t = tail(d, 0).unwrap();
        assert_eq!((t.end, names(&t)), (6, vec!["e".to_string(), "f".to_string()]));
    }
}
