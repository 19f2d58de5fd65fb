//! A strict, streaming zip reader and the writer keyferry uses, side by side.
//!
//! Why not a general zip crate: the payload arrives as a stream of
//! authenticated plaintext, and a general reader wants to seek to the central
//! directory at the end. This reader walks the local headers in order, then
//! checks that the central directory says exactly the same thing, so the two
//! views of the archive cannot disagree.
//!
//! Invariants:
//! - only what an importer needs is accepted: stored or deflate entries, no
//!   encryption, no zip64, no multi-disk, nothing after the end record;
//! - sizes are enforced while inflating (never trusted from a header), so a
//!   zip bomb stops at the cap;
//! - every entry's CRC-32 and sizes are checked before the next one starts.

use std::io::{self, BufRead, Read, Write};

use flate2::bufread::DeflateDecoder;
use thiserror::Error;

const SIG_LOCAL: u32 = 0x0403_4b50;
const SIG_CENTRAL: u32 = 0x0201_4b50;
const SIG_END: u32 = 0x0605_4b50;
const SIG_DESCRIPTOR: u32 = 0x0807_4b50;
const METHOD_STORED: u16 = 0;
const METHOD_DEFLATE: u16 = 8;
const FLAG_ENCRYPTED: u16 = 0x0001;
const FLAG_DESCRIPTOR: u16 = 0x0008;
const FLAG_STRONG_ENCRYPTION: u16 = 0x0040;
const FLAG_UTF8: u16 = 0x0800;
/// Only these flags may be set: descriptor, UTF-8 names, and the deflate
/// compression-level hints (bits 1-2).
const FLAGS_ALLOWED: u16 = FLAG_DESCRIPTOR | FLAG_UTF8 | 0x0006;
const ZIP64_MARKER: u32 = 0xFFFF_FFFF;
/// Version-needed values the writer puts in headers (1.0 for stored).
const VERSION_STORED: u16 = 10;
/// 1980-01-01 00:00 in MS-DOS format: entries carry no meaningful time, and
/// a fixed one keeps payloads reproducible.
const DOS_DATE: u16 = 0x0021;
const DOS_TIME: u16 = 0;
const MAX_NAME_LEN: usize = 256;
const MAX_EXTRA_LEN: usize = 1024;
const MAX_COMMENT_LEN: usize = 1024;
/// More entries than any valid payload has; stops a central directory from
/// being used to make us allocate.
pub const MAX_ENTRIES: usize = 16;

#[derive(Debug, Error)]
pub enum ZipError {
    #[error("the payload archive is malformed: {0}")]
    Malformed(String),
    #[error("the payload archive uses {0}, which keyferry does not accept")]
    Unsupported(String),
    #[error("entry {name}: uncompressed data is over the payload cap of {cap} bytes")]
    TooLarge { name: String, cap: u64 },
    #[error("entry {0}: CRC-32 or size does not match its header")]
    Checksum(String),
    #[error("entry {0}: rejected: {1}")]
    Rejected(String, String),
    #[error("reading the payload: {0}")]
    Io(#[source] io::Error),
}

fn malformed(what: impl Into<String>) -> ZipError {
    ZipError::Malformed(what.into())
}

pub(crate) fn io_err(e: io::Error) -> ZipError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return malformed("it ends in the middle of a record");
    }
    ZipError::Io(e)
}

/// What the reader learnt of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub name: String,
    pub method: u16,
    pub crc: u32,
    pub size: u64,
    offset: u64,
}

/// Counts bytes consumed, to check the offsets the central directory claims.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: BufRead> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.count += amt as u64;
        self.inner.consume(amt);
    }
}

fn u16_le(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_le(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn read_u32(r: &mut impl Read) -> Result<u32, ZipError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(io_err)?;
    Ok(u32::from_le_bytes(b))
}

fn skip(r: &mut impl Read, n: usize, what: &str, max: usize) -> Result<Vec<u8>, ZipError> {
    if n > max {
        return Err(malformed(format!("{what} of {n} bytes is too long")));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).map_err(io_err)?;
    Ok(b)
}

/// The decompressed data of one entry, with its CRC, size and the payload
/// cap checked as it is read.
struct Checked<R> {
    inner: R,
    name: String,
    crc: crc32fast::Hasher,
    size: u64,
    /// The most this entry may still produce before the payload cap.
    budget: u64,
    /// The entry went over the cap: a read failed for that reason, and the
    /// reader reports it as [`ZipError::TooLarge`], whatever the callback
    /// made of the `io::Error`.
    over_cap: bool,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte more than the budget allows, so that going over
        // is seen while inflating, not after.
        let want = buf
            .len()
            .min(usize::try_from(self.budget + 1).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.budget {
            self.over_cap = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("entry {} is over the payload cap", self.name),
            ));
        }
        self.budget -= n as u64;
        self.size += n as u64;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads an archive from `input`, calling `on_entry(name, data)` for every
/// entry in order. `on_entry` may refuse an entry by returning an error; it
/// need not read all of `data` (the rest is read and checked here).
/// Returns the entries seen. Stops after the end record; the caller checks
/// that its stream ends there.
pub fn read_archive<R: BufRead>(
    input: R,
    max_total: u64,
    mut on_entry: impl FnMut(&str, &mut dyn Read) -> Result<(), ZipError>,
) -> Result<(Vec<EntryInfo>, R), ZipError> {
    let mut r = Counting {
        inner: input,
        count: 0,
    };
    let mut entries: Vec<EntryInfo> = Vec::new();
    let mut total: u64 = 0;
    let sig = loop {
        let offset = r.count;
        let sig = read_u32(&mut r)?;
        if sig != SIG_LOCAL {
            break sig;
        }
        if entries.len() == MAX_ENTRIES {
            return Err(malformed(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut h = [0u8; 26];
        r.read_exact(&mut h).map_err(io_err)?;
        let flags = u16_le(&h, 2);
        let method = u16_le(&h, 4);
        let crc = u32_le(&h, 10);
        let csize = u32_le(&h, 14);
        let usize_ = u32_le(&h, 18);
        let name_len = usize::from(u16_le(&h, 22));
        let extra_len = usize::from(u16_le(&h, 24));
        let name_bytes = skip(&mut r, name_len, "an entry name", MAX_NAME_LEN)?;
        skip(&mut r, extra_len, "an extra field", MAX_EXTRA_LEN)?;
        let name =
            String::from_utf8(name_bytes).map_err(|_| malformed("an entry name is not UTF-8"))?;
        if flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) != 0 {
            return Err(ZipError::Unsupported(format!("encryption (entry {name})")));
        }
        if flags & !FLAGS_ALLOWED != 0 {
            return Err(ZipError::Unsupported(format!(
                "flags {flags:#06x} (entry {name})"
            )));
        }
        if csize == ZIP64_MARKER || usize_ == ZIP64_MARKER {
            return Err(ZipError::Unsupported(format!("zip64 (entry {name})")));
        }
        let descriptor = flags & FLAG_DESCRIPTOR != 0;
        let cap_left = max_total - total;
        let info = match (method, descriptor) {
            (METHOD_STORED, true) => {
                return Err(ZipError::Unsupported(format!(
                    "a stored entry with a data descriptor (entry {name})"
                )))
            }
            (METHOD_STORED, false) => {
                if csize != usize_ {
                    return Err(malformed(format!(
                        "stored entry {name} has two different sizes"
                    )));
                }
                let data = (&mut r).take(u64::from(csize));
                let (size, got_crc) = run_entry(&name, data, cap_left, max_total, &mut on_entry)?;
                if size != u64::from(csize) {
                    return Err(malformed("it ends in the middle of an entry"));
                }
                check(&name, (crc, u64::from(usize_)), (got_crc, size))?;
                (crc, size)
            }
            (METHOD_DEFLATE, false) => {
                let mut compressed = (&mut r).take(u64::from(csize));
                let data = DeflateDecoder::new(&mut compressed);
                let (size, got_crc) = run_entry(&name, data, cap_left, max_total, &mut on_entry)?;
                if compressed.limit() != 0 {
                    return Err(malformed(format!(
                        "entry {name} has data after its deflate stream"
                    )));
                }
                check(&name, (crc, u64::from(usize_)), (got_crc, size))?;
                (crc, size)
            }
            (METHOD_DEFLATE, true) => {
                let start = r.count;
                let data = DeflateDecoder::new(&mut r);
                let (size, got_crc) = run_entry(&name, data, cap_left, max_total, &mut on_entry)?;
                let compressed = r.count - start;
                let mut first = read_u32(&mut r)?;
                if first == SIG_DESCRIPTOR {
                    first = read_u32(&mut r)?;
                }
                let d_csize = read_u32(&mut r)?;
                let d_usize = read_u32(&mut r)?;
                if u64::from(d_csize) != compressed {
                    return Err(ZipError::Checksum(name));
                }
                check(&name, (first, u64::from(d_usize)), (got_crc, size))?;
                (first, size)
            }
            (other, _) => {
                return Err(ZipError::Unsupported(format!(
                    "compression method {other} (entry {name})"
                )))
            }
        };
        total += info.1;
        entries.push(EntryInfo {
            name,
            method,
            crc: info.0,
            size: info.1,
            offset,
        });
    };
    let cd_start = r.count - 4;
    let mut sig = sig;
    for (i, e) in entries.iter().enumerate() {
        if sig != SIG_CENTRAL {
            return Err(malformed(format!(
                "the central directory lists {i} entries, the archive has {}",
                entries.len()
            )));
        }
        let mut h = [0u8; 42];
        r.read_exact(&mut h).map_err(io_err)?;
        let name = skip(
            &mut r,
            usize::from(u16_le(&h, 24)),
            "an entry name",
            MAX_NAME_LEN,
        )?;
        skip(
            &mut r,
            usize::from(u16_le(&h, 26)),
            "an extra field",
            MAX_EXTRA_LEN,
        )?;
        skip(
            &mut r,
            usize::from(u16_le(&h, 28)),
            "an entry comment",
            MAX_COMMENT_LEN,
        )?;
        let agrees = name == e.name.as_bytes()
            && u16_le(&h, 6) == e.method
            && u32_le(&h, 12) == e.crc
            && u64::from(u32_le(&h, 20)) == e.size
            && u16_le(&h, 30) == 0
            && u64::from(u32_le(&h, 38)) == e.offset;
        if !agrees {
            return Err(malformed(format!(
                "the central directory disagrees with the local header of {}",
                e.name
            )));
        }
        sig = read_u32(&mut r)?;
    }
    if sig != SIG_END {
        return Err(malformed(
            "expected the end-of-central-directory record (extra entries or zip64 are not accepted)",
        ));
    }
    let cd_size = r.count - 4 - cd_start;
    let mut end = [0u8; 18];
    r.read_exact(&mut end).map_err(io_err)?;
    let n = entries.len() as u64;
    let consistent = u16_le(&end, 0) == 0
        && u16_le(&end, 2) == 0
        && u64::from(u16_le(&end, 4)) == n
        && u64::from(u16_le(&end, 6)) == n
        && u64::from(u32_le(&end, 8)) == cd_size
        && u64::from(u32_le(&end, 12)) == cd_start;
    if !consistent {
        return Err(malformed(
            "the end-of-central-directory record is inconsistent",
        ));
    }
    skip(
        &mut r,
        usize::from(u16_le(&end, 16)),
        "the archive comment",
        MAX_COMMENT_LEN,
    )?;
    Ok((entries, r.inner))
}

fn run_entry<R: Read>(
    name: &str,
    data: R,
    budget: u64,
    cap: u64,
    on_entry: &mut impl FnMut(&str, &mut dyn Read) -> Result<(), ZipError>,
) -> Result<(u64, u32), ZipError> {
    let mut checked = Checked {
        inner: data,
        name: name.to_owned(),
        crc: crc32fast::Hasher::new(),
        size: 0,
        budget,
        over_cap: false,
    };
    let result = on_entry(name, &mut checked)
        .and_then(|()| io::copy(&mut checked, &mut io::sink()).map_err(io_err));
    if checked.over_cap {
        return Err(ZipError::TooLarge {
            name: name.to_owned(),
            cap,
        });
    }
    result?;
    let Checked { crc, size, .. } = checked;
    Ok((size, crc.finalize()))
}

fn check(name: &str, declared: (u32, u64), got: (u32, u64)) -> Result<(), ZipError> {
    if declared != got {
        return Err(ZipError::Checksum(name.to_owned()));
    }
    Ok(())
}

/// Writes a stored (uncompressed) archive. Entries are written with their
/// sizes and CRC in the local header, which the reader needs and every zip
/// tool reads.
pub struct ZipWriter<W: Write> {
    out: W,
    offset: u64,
    central: Vec<u8>,
    count: u16,
}

impl<W: Write> ZipWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            central: Vec::new(),
            count: 0,
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Adds an entry whose CRC-32 and length the caller knows, streaming its
    /// data from `data`; fails if the data does not match them (the file
    /// changed between the two reads).
    pub(crate) fn add(
        &mut self,
        name: &str,
        len: u64,
        crc: u32,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let size = u32::try_from(len)
            .ok()
            .filter(|s| *s != ZIP64_MARKER)
            .ok_or_else(|| io::Error::other(format!("entry {name} is too large for a payload")))?;
        let name_len = u16::try_from(name.len()).map_err(io::Error::other)?;
        let offset = u32::try_from(self.offset).map_err(io::Error::other)?;
        let mut local = Vec::with_capacity(30 + name.len());
        local.extend_from_slice(&SIG_LOCAL.to_le_bytes());
        let common = header_fields(crc, size, name_len);
        local.extend_from_slice(&common);
        local.extend_from_slice(&0u16.to_le_bytes()); // extra length
        local.extend_from_slice(name.as_bytes());
        self.emit(&local)?;

        // A file that grew meanwhile writes too much here; the check below
        // fails the whole export then, and its staged bundle is discarded.
        let (got_crc, written) = hash_blocks(data, |block| self.emit(block))?;
        if written != len || got_crc != crc {
            return Err(io::Error::other(format!(
                "{name} changed while it was being added: try again"
            )));
        }

        self.central.extend_from_slice(&SIG_CENTRAL.to_le_bytes());
        self.central
            .extend_from_slice(&VERSION_STORED.to_le_bytes()); // made by
        self.central.extend_from_slice(&common);
        self.central.extend_from_slice(&0u16.to_le_bytes()); // extra
        self.central.extend_from_slice(&0u16.to_le_bytes()); // comment
        self.central.extend_from_slice(&0u16.to_le_bytes()); // disk
        self.central.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
        self.central.extend_from_slice(&0u32.to_le_bytes()); // external attrs
        self.central.extend_from_slice(&offset.to_le_bytes());
        self.central.extend_from_slice(name.as_bytes());
        self.count += 1;
        Ok(())
    }

    /// Adds an entry held in memory.
    pub fn add_bytes(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.add(
            name,
            data.len() as u64,
            crc32fast::hash(data),
            &mut &data[..],
        )
    }

    /// Writes the central directory and end record; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let cd_offset = u32::try_from(self.offset).map_err(io::Error::other)?;
        let cd_size = u32::try_from(self.central.len()).map_err(io::Error::other)?;
        let central = std::mem::take(&mut self.central);
        self.emit(&central)?;
        let mut end = Vec::with_capacity(22);
        end.extend_from_slice(&SIG_END.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes()); // this disk
        end.extend_from_slice(&0u16.to_le_bytes()); // disk with the directory
        end.extend_from_slice(&self.count.to_le_bytes());
        end.extend_from_slice(&self.count.to_le_bytes());
        end.extend_from_slice(&cd_size.to_le_bytes());
        end.extend_from_slice(&cd_offset.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes()); // comment
        self.emit(&end)?;
        Ok(self.out)
    }
}

/// The fields local and central headers share, from "version needed" to the
/// name length.
fn header_fields(crc: u32, size: u32, name_len: u16) -> [u8; 24] {
    let mut f = [0u8; 24];
    f[0..2].copy_from_slice(&VERSION_STORED.to_le_bytes());
    f[2..4].copy_from_slice(&0u16.to_le_bytes()); // flags
    f[4..6].copy_from_slice(&METHOD_STORED.to_le_bytes());
    f[6..8].copy_from_slice(&DOS_TIME.to_le_bytes());
    f[8..10].copy_from_slice(&DOS_DATE.to_le_bytes());
    f[10..14].copy_from_slice(&crc.to_le_bytes());
    f[14..18].copy_from_slice(&size.to_le_bytes());
    f[18..22].copy_from_slice(&size.to_le_bytes());
    f[22..24].copy_from_slice(&name_len.to_le_bytes());
    f
}

/// CRC-32 and length of everything `r` yields: the first of the writer's
/// two passes over a file.
pub fn crc_and_len(r: &mut dyn Read) -> io::Result<(u32, u64)> {
    hash_blocks(r, |_| Ok(()))
}

/// Reads `r` to its end in blocks, handing each to `each`, and returns the
/// CRC-32 and length of all of it. The buffer is wiped afterwards:
/// configuration files can hold connection strings.
fn hash_blocks(
    r: &mut dyn Read,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<(u32, u64)> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 64 * 1024]);
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher.finalize(), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
        each(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_over_the_cap_is_too_large_whatever_the_callback_makes_of_it() {
        let mut w = ZipWriter::new(Vec::new());
        w.add_bytes("big", &[7u8; 100]).unwrap();
        let zip = w.finish().unwrap();
        // The callback reads, fails, and reports a refusal of its own; or
        // reads nothing and leaves the rest to the reader.
        for reads in [true, false] {
            let result = read_archive(&zip[..], 50, |name, data| {
                if reads {
                    let mut all = Vec::new();
                    data.read_to_end(&mut all)
                        .map_err(|e| ZipError::Rejected(name.into(), e.to_string()))?;
                }
                Ok(())
            });
            assert!(
                matches!(result, Err(ZipError::TooLarge { cap: 50, .. })),
                "reads {reads}: {result:?}"
            );
        }
        assert!(read_archive(&zip[..], 100, |_, _| Ok(())).is_ok());
    }
}
