//! Tar archives as job inputs: the file entries of an archive in SDFS are one query
//! each, in archive order. Reads ustar, GNU (long names, base-256 sizes) and pax
//! (`path`, `size`) headers; everything that is not a regular file (directories, links,
//! devices) is skipped. A damaged archive is an error naming where it broke, never a
//! panic or a read past the end.

use thiserror::Error;

/// One file entry of an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its path inside the archive.
    pub name: String,
    /// Where its bytes start in the archive.
    pub offset: usize,
    /// How many bytes it has.
    pub len: usize,
}

/// Why an archive could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ArchiveError {
    /// The bytes end inside a header or an entry.
    #[error("archive truncated at byte {0}")]
    Truncated(usize),
    /// A header's checksum or size field is not valid.
    #[error("archive header at byte {0} is damaged")]
    BadHeader(usize),
}

const BLOCK: usize = 512;

/// Whether `name` is taken for an archive by job submission (`.tar`).
pub fn is_archive_name(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".tar")
}

/// The file entries of `tar`, in archive order.
pub fn entries(tar: &[u8]) -> Result<Vec<Entry>, ArchiveError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    // A GNU `L` or pax `x` header names (or sizes) the entry that follows it.
    let mut long_name: Option<String> = None;
    let mut pax_size: Option<usize> = None;
    loop {
        let Some(h) = tar.get(pos..pos + BLOCK) else {
            // No end-of-archive blocks: accepted when the bytes end on an entry boundary.
            return if pos == tar.len() {
                Ok(out)
            } else {
                Err(ArchiveError::Truncated(pos))
            };
        };
        if h.iter().all(|b| *b == 0) {
            return Ok(out);
        }
        if !checksum_ok(h) {
            return Err(ArchiveError::BadHeader(pos));
        }
        let size = match pax_size.take() {
            Some(s) => s,
            None => field_size(&h[124..136]).ok_or(ArchiveError::BadHeader(pos))?,
        };
        let data = pos + BLOCK;
        let end = data
            .checked_add(size)
            .filter(|e| *e <= tar.len())
            .ok_or(ArchiveError::Truncated(pos))?;
        let kind = h[156];
        match kind {
            b'L' => long_name = Some(text(&tar[data..end])),
            b'x' => {
                for (key, value) in pax_records(&tar[data..end]) {
                    match key.as_str() {
                        "path" => long_name = Some(value),
                        "size" => pax_size = value.parse().ok(),
                        _ => {}
                    }
                }
            }
            b'0' | 0 | b'7' => {
                let name = long_name.take().unwrap_or_else(|| header_name(h));
                out.push(Entry {
                    name,
                    offset: data,
                    len: size,
                });
            }
            _ => long_name = None,
        }
        let padded = size.div_ceil(BLOCK) * BLOCK;
        pos = data
            .checked_add(padded)
            .ok_or(ArchiveError::Truncated(pos))?;
        if pos > tar.len() {
            // The last entry's padding may be missing; nothing can follow it.
            return Ok(out);
        }
    }
}

/// How many file entries `tar` has (what a job counts as its queries).
pub fn count(tar: &[u8]) -> Result<u32, ArchiveError> {
    let n = entries(tar)?.len();
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Builds a ustar archive of `files` (name, bytes), for tests and `dml bench scale`.
/// Names longer than 100 bytes get a GNU long-name header.
pub fn build(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        if name.len() > 100 {
            let mut long = name.as_bytes().to_vec();
            long.push(0);
            push_entry(&mut out, "././@LongLink", b'L', &long);
        }
        push_entry(&mut out, name, b'0', data);
    }
    out.extend_from_slice(&[0u8; BLOCK * 2]);
    out
}

fn push_entry(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8]) {
    let mut h = [0u8; BLOCK];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
}

fn checksum_ok(h: &[u8]) -> bool {
    let Some(want) = octal(&h[148..156]) else {
        return false;
    };
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    sum == want
}

fn octal(f: &[u8]) -> Option<u64> {
    let s: Vec<u8> = f
        .iter()
        .copied()
        .take_while(|b| *b != 0)
        .filter(|b| *b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// The size field: octal, or GNU base-256 (high bit of the first byte set).
fn field_size(f: &[u8]) -> Option<usize> {
    if f[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return usize::try_from(v).ok();
    }
    usize::try_from(octal(f)?).ok()
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn header_name(h: &[u8]) -> String {
    let name = text(&h[0..100]);
    let prefix = if &h[257..262] == b"ustar" {
        text(&h[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// pax records: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_records(mut b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some(sp) = b.iter().position(|c| *c == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&b[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > b.len() {
            break;
        }
        let rec = &b[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|c| *c == b'=') {
            out.push((
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                String::from_utf8_lossy(&rec[eq + 1..]).into_owned(),
            ));
        }
        b = &b[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("img/{i:04}.jpg"), vec![i as u8; i * 37 % 1500]))
            .collect()
    }

    #[test]
    fn entries_round_trip_with_offsets_and_long_names() {
        let mut fs = files(20);
        fs.push(("d/".repeat(80) + "long.png", b"long".to_vec()));
        let tar = build(&fs);
        let es = entries(&tar).unwrap();
        assert_eq!(es.len(), fs.len());
        for (e, (name, data)) in es.iter().zip(&fs) {
            assert_eq!(&e.name, name);
            assert_eq!(&tar[e.offset..e.offset + e.len], data.as_slice());
        }
        assert_eq!(count(&tar).unwrap(), 21);
    }

    #[test]
    fn damaged_archives_are_errors_not_panics() {
        let tar = build(&files(5));
        // Cut inside the third entry's data.
        let es = entries(&tar).unwrap();
        let cut = &tar[..es[2].offset + 3];
        assert!(matches!(entries(cut), Err(ArchiveError::Truncated(_))));
        let mut bad = tar.clone();
        bad[es[1].offset - BLOCK + 130] ^= 0x11;
        assert!(matches!(entries(&bad), Err(ArchiveError::BadHeader(_))));
        // Random bytes: an error, never a panic.
        let junk: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(entries(&junk).is_err());
        assert_eq!(entries(&[]).unwrap(), Vec::new());
    }

    #[test]
    fn system_tar_archives_are_read() {
        // Made by the system's `tar cf`, with directory entries that must be skipped.
        let dir = std::env::temp_dir().join(format!("dml-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("in/sub")).unwrap();
        std::fs::write(dir.join("in/a.jpg"), b"aaa").unwrap();
        std::fs::write(dir.join("in/sub/b.jpg"), vec![7u8; 1000]).unwrap();
        let tar = dir.join("x.tar");
        let ok = std::process::Command::new("tar")
            .arg("cf")
            .arg(&tar)
            .arg("-C")
            .arg(&dir)
            .arg("in")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "`tar cf` failed (is tar installed?)");
        let bytes = std::fs::read(&tar).unwrap();
        let es = entries(&bytes).unwrap();
        let mut names: Vec<&str> = es.iter().map(|e| e.name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["in/a.jpg", "in/sub/b.jpg"]);
        let b = es.iter().find(|e| e.name == "in/sub/b.jpg").unwrap();
        assert_eq!(&bytes[b.offset..b.offset + b.len], &[7u8; 1000][..]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
