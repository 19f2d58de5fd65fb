//! The sealed bundle, format version 1: a password-derived key commits to
//! and unwraps a random file key, from which the payload key is derived; the
//! payload is a STREAM of AES-256-GCM chunks. `docs/format.md` specifies
//! it; this module implements it byte for byte.
//!
//! Invariants:
//! - a payload key is never used for two bundles: every bundle gets a fresh
//!   random file key and payload salt;
//! - opening checks happen in the documented order (magic; version and KDF
//!   id; KDF limits; key commitment; unwrap; expiry; payload), and nothing is
//!   decrypted before the commitment matched. The order is kept by the
//!   types: [`read_header`] checks the limits and returns a [`Locked`]
//!   bundle, the only thing that can be unlocked with a password
//!   ([`Locked::unlock`]), which gives the [`BundleReader`] over the
//!   payload; [`inspect`] reads a header for display and cannot unlock;
//! - errors are typed all the way: the readers underneath (armor, STREAM)
//!   keep their [`BundleError`] when `Read` makes them return an
//!   `io::Error`, and [`BundleReader::take_error`] and
//!   [`BundleReader::parse_payload`] hand it back;
//! - secret keys (KEK, file key, payload key) live in zeroizing buffers.
//!
//! This module never touches the file system: it reads and writes streams.

pub mod armor;
pub mod header;
pub mod keys;
pub mod stream;
pub mod v2;

use std::io::{self, BufRead, Read, Write};

use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::aead::Cipher;
use crate::fmt::fmt_time;
use crate::kdf::{self, KdfError, KdfLimits, KdfParams};
use crate::secret::Password;
pub use armor::{ArmorReader, ArmorWriter, Ignored};
pub use header::{Header, HEADER_LEN};
pub use stream::{SealedInput, StreamOpener, StreamSealer, CHUNK_SIZE};

const FILE_KEY_LEN: usize = 32;
const PAYLOAD_INFO: &[u8] = b"keyferry bundle v1 payload";
/// The wrapped file key uses a fixed all-zero nonce: its key, the KEK, is
/// unique to the bundle because the KDF salt is random.
const WRAP_NONCE: [u8; 12] = [0; 12];

#[derive(Debug, Error)]
pub enum BundleError {
    #[error(
        "the file is empty (0 bytes): the copy was probably interrupted; copy the bundle again"
    )]
    Empty,
    #[error("not a keyferry bundle (it neither starts with KFBUNDLE nor has an armor BEGIN line): check the file name")]
    NotABundle,
    #[error(
        "the bundle ends inside its header ({0} of 150 bytes): the copy was cut off; copy it again"
    )]
    TruncatedHeader(usize),
    #[error("bundle format version {0} is not supported by this keyferry: upgrade keyferry on this host")]
    UnsupportedVersion(u8),
    #[error("the bundle uses KDF id {0}, which this keyferry does not know: upgrade keyferry on this host")]
    UnsupportedKdf(u8),
    #[error(transparent)]
    Kdf(#[from] KdfError),
    #[error(
        "wrong password, or the bundle's header was modified (the two cannot be told apart): \
         re-type the password shown at export, or export again"
    )]
    WrongPasswordOrModifiedHeader,
    #[error(
        "the bundle expired at {} (now {}): export a fresh one on the primary, \
         or pass --allow-expired if you are sure it is the right bundle",
        fmt_time(*expires), fmt_time(*now)
    )]
    Expired { expires: u64, now: u64 },
    #[error("the bundle is truncated: its final chunk is missing; copy the whole file again")]
    Truncated,
    #[error("payload chunk {0} failed authentication: the bundle was modified or cut short; copy it again from the source")]
    ModifiedChunk(u64),
    #[error(
        "the bundle has data after its final chunk: remove what was appended, or copy it again"
    )]
    TrailingData,
    #[error("the bundle's final chunk is empty after data, which the format forbids: the bundle was tampered with")]
    EmptyFinalChunk,
    #[error("the bundle's payload continues after its end: the bundle was not made by keyferry")]
    ExtraPayload,
    #[error("malformed armor: {0}; paste the text again between the BEGIN and END lines")]
    Armor(String),
    #[error("the payload stream already failed")]
    StreamAlreadyFailed,
    #[error("cannot read or write the bundle: {0}")]
    Io(#[source] io::Error),
    #[error("the distribution ends inside its header or before its signature: it was cut off; run `keyferry distribute` on a pair node again")]
    TruncatedDistribution,
    #[error("the distribution uses recipient type {0}, which this keyferry does not know: upgrade keyferry on this host")]
    UnsupportedRecipientType(u8),
    #[error(
        "the distribution names {0} recipients (1 to 1024 allowed): it was not made by keyferry"
    )]
    RecipientCount(u16),
    #[error(
        "the distribution is {0} bytes, more than any keyferry makes: it was not made by keyferry"
    )]
    DistributionTooLarge(usize),
    #[error("the distribution is signed by key {found}, but this host accepts only the pair's signing key {pinned}: it was not made by this pair; if the pair's signing key was replaced on purpose, import a password bundle from the pair once (`keyferry export` there, `keyferry import --keys-only` here)")]
    WrongSigner { found: String, pinned: String },
    #[error("the distribution's signature does not verify under the pair's signing key: it was modified, cut short or forged; nothing was taken from it (run `keyferry distribute` on a pair node to store a fresh one)")]
    BadSignature,
    #[error("the distribution is not sealed to this host's key {this} (it is sealed to {}): it belongs to another host; approve this host on a pair node (`keyferry nodes approve NAME --fingerprint {this}`) and distribute again", recipients.join(", "))]
    NotForThisHost {
        this: String,
        recipients: Vec<String>,
    },
    #[error("this host's stanza in the distribution does not open with its host key although the pair signed it: the pair node that sealed it is faulty; distribute again")]
    StanzaFailed,
    #[error("this is a format 2 distribution, sealed to a host's key and not to a password: a host takes its own with `keyferry nodes sync`, not with import")]
    IsDistribution,
    #[error("host key {0} is not a usable X25519 key (low order): it cannot be a recipient")]
    LowOrderRecipient(String),
}

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| io::Error::other(format!("OS random generator failed: {e}")))?;
    Ok(b)
}

fn payload_key(file_key: &[u8], payload_salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(payload_salt), file_key)
        .expand(PAYLOAD_INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

/// What a new bundle's header says besides its keys.
#[derive(Clone, Copy, Debug)]
pub struct SealParams {
    pub kdf: KdfParams,
    /// Unix seconds.
    pub created: u64,
    pub expires: Option<u64>,
    pub armor: bool,
}

enum Sink<W: Write> {
    Binary(W),
    Armored(ArmorWriter<W>),
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Binary(w) => w.write(buf),
            Sink::Armored(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Binary(w) => w.flush(),
            Sink::Armored(w) => w.flush(),
        }
    }
}

/// A bundle being written: write the payload plaintext to it, then call
/// [`finish`](Self::finish).
pub struct BundleWriter<W: Write> {
    stream: StreamSealer<Sink<W>>,
    header: Header,
}

impl<W: Write> BundleWriter<W> {
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Seals the final chunk and returns the underlying writer.
    pub fn finish(self) -> Result<W, BundleError> {
        match self.stream.finish().map_err(BundleError::Io)? {
            Sink::Binary(w) => Ok(w),
            Sink::Armored(a) => a.finish().map_err(BundleError::Io),
        }
    }
}

impl<W: Write> Write for BundleWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Starts a bundle: derives the KEK (the slow part), writes the header, and
/// returns the writer for the payload.
pub fn seal<W: Write>(
    password: &Password,
    params: &SealParams,
    out: W,
) -> Result<BundleWriter<W>, BundleError> {
    params.kdf.check_for_export()?;
    let kdf_salt = random().map_err(BundleError::Io)?;
    let kek = kdf::derive_kek(password.as_bytes(), &kdf_salt, &params.kdf)?;
    seal_with_kek(&kek, kdf_salt, params, out)
}

/// The part of [`seal`] after the KDF; separate so that benchmarks can
/// measure the payload path alone.
pub fn seal_with_kek<W: Write>(
    kek: &[u8; 32],
    kdf_salt: [u8; header::SALT_LEN],
    params: &SealParams,
    out: W,
) -> Result<BundleWriter<W>, BundleError> {
    let file_key: Zeroizing<[u8; FILE_KEY_LEN]> =
        Zeroizing::new(random().map_err(BundleError::Io)?);
    let mut header = Header {
        kdf: params.kdf,
        kdf_salt,
        created: params.created,
        expires: params.expires,
        payload_salt: random().map_err(BundleError::Io)?,
        commitment: [0; header::COMMITMENT_LEN],
        wrapped_key: [0; header::WRAPPED_KEY_LEN],
    };
    header.commitment = header.compute_commitment(kek);
    let mut wrapped = Zeroizing::new(*file_key);
    let tag =
        Cipher::new(kek).seal_in_place(&WRAP_NONCE, &header.wrap_aad(), wrapped.as_mut_slice());
    header.wrapped_key[..FILE_KEY_LEN].copy_from_slice(wrapped.as_slice());
    header.wrapped_key[FILE_KEY_LEN..].copy_from_slice(&tag);

    let mut sink = if params.armor {
        Sink::Armored(ArmorWriter::new(out).map_err(BundleError::Io)?)
    } else {
        Sink::Binary(out)
    };
    sink.write_all(&header.encode()).map_err(BundleError::Io)?;
    let key = payload_key(file_key.as_slice(), &header.payload_salt);
    Ok(BundleWriter {
        stream: StreamSealer::new(&key, sink),
        header,
    })
}

/// The bytes of a bundle, binary or armored, as found in a file.
pub enum Source<R: BufRead> {
    Binary(R),
    Armored(ArmorReader<R>),
}

impl<R: BufRead> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Binary(r) => r.read(buf),
            Source::Armored(r) => r.read(buf),
        }
    }
}

impl<R: BufRead> SealedInput for Source<R> {
    fn take_error(&mut self) -> Option<BundleError> {
        match self {
            Source::Binary(_) => None,
            Source::Armored(r) => r.take_error(),
        }
    }
}

impl<R: BufRead> Source<R> {
    /// Tells binary from armored by the first bytes: a binary bundle starts
    /// with the magic (a file shorter than it, with as much of it as it
    /// holds); anything else is read as text, in which the armor reader
    /// looks for the BEGIN line.
    pub fn detect(mut input: R) -> Result<Self, BundleError> {
        let first = input.fill_buf().map_err(BundleError::Io)?;
        if first.is_empty() {
            return Err(BundleError::Empty);
        }
        let n = first.len().min(header::MAGIC.len());
        if first[..n] == header::MAGIC[..n] {
            Ok(Source::Binary(input))
        } else {
            Ok(Source::Armored(ArmorReader::new(input)))
        }
    }

    pub(crate) fn is_armored(&self) -> bool {
        matches!(self, Source::Armored(_))
    }

    /// Text the armor reader skipped so far (none in the binary form).
    pub fn ignored(&self) -> Ignored {
        match self {
            Source::Binary(_) => Ignored::default(),
            Source::Armored(r) => r.ignored(),
        }
    }
}

/// Reads and parses the header: the magic, the version and the KDF id.
fn parse_header<R: BufRead>(input: R) -> Result<(Header, Source<R>), BundleError> {
    let mut source = Source::detect(input)?;
    let mut bytes = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match source.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(source.take_error().unwrap_or(BundleError::Io(e))),
        }
    }
    if filled == 0 {
        return Err(BundleError::Empty);
    }
    Ok((Header::parse(&bytes[..filled])?, source))
}

/// What a bundle's header says, read for display (`keyferry inspect`):
/// nothing is authenticated and no limit is checked, and it cannot be
/// unlocked; an import goes through [`read_header`].
#[derive(Clone, Debug)]
pub(crate) struct Inspected {
    pub header: Header,
    pub armored: bool,
    /// Text around the armor that is not part of the bundle.
    pub ignored: Ignored,
}

/// Reads a bundle's header for display; see [`Inspected`]. The armored
/// form is read to its END line (base64 only, nothing is decrypted), so a
/// broken paste is found before anyone types the password, and the text
/// after END is counted.
pub(crate) fn inspect<R: BufRead>(input: R) -> Result<Inspected, BundleError> {
    let (header, mut source) = parse_header(input)?;
    if source.is_armored() {
        if let Err(e) = io::copy(&mut source, &mut io::sink()) {
            return Err(source.take_error().unwrap_or(BundleError::Io(e)));
        }
    }
    Ok(Inspected {
        header,
        armored: source.is_armored(),
        ignored: source.ignored(),
    })
}

/// The first phase of opening: reads the header and checks its KDF
/// parameters against `limits`, before any memory is spent on the KDF.
/// Unlock what it returns with the password.
pub fn read_header<R: BufRead>(input: R, limits: &KdfLimits) -> Result<Locked<R>, BundleError> {
    let (header, source) = parse_header(input)?;
    limits.check(&header.kdf)?;
    Ok(Locked { header, source })
}

/// How an importer opens bundles, beyond the limits [`read_header`] took.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Unix seconds, to compare against the header's expiry.
    pub now: u64,
    pub allow_expired: bool,
}

/// A bundle whose header was read and whose KDF parameters are within the
/// importer's limits; nothing in it is authenticated yet.
pub struct Locked<R: BufRead> {
    header: Header,
    source: Source<R>,
}

impl<R: BufRead> Locked<R> {
    /// The header as read: not authenticated until [`unlock`](Self::unlock)
    /// succeeds.
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn is_armored(&self) -> bool {
        self.source.is_armored()
    }

    /// Text skipped before the armor's BEGIN line (what follows END is
    /// known once the payload was read: [`BundleReader::ignored`]).
    pub fn ignored(&self) -> Ignored {
        self.source.ignored()
    }

    /// The second phase: derives the KEK from the password (the slow
    /// part), checks the key commitment, unwraps the file key and checks the
    /// expiry; returns the reader of the authenticated payload.
    pub fn unlock(
        self,
        password: &Password,
        options: &OpenOptions,
    ) -> Result<BundleReader<R>, BundleError> {
        let kek = kdf::derive_kek(password.as_bytes(), &self.header.kdf_salt, &self.header.kdf)?;
        self.unlock_with_kek(&kek, options)
    }

    /// The part of [`unlock`](Self::unlock) after the KDF; separate so that
    /// benchmarks and fuzzing can open with a fixed KEK.
    pub fn unlock_with_kek(
        self,
        kek: &[u8; 32],
        options: &OpenOptions,
    ) -> Result<BundleReader<R>, BundleError> {
        let Self { header, source } = self;
        if !header.verify_commitment(kek) {
            return Err(BundleError::WrongPasswordOrModifiedHeader);
        }
        let mut file_key = Zeroizing::new([0u8; FILE_KEY_LEN]);
        file_key.copy_from_slice(&header.wrapped_key[..FILE_KEY_LEN]);
        let tag = header.wrapped_key[FILE_KEY_LEN..]
            .try_into()
            .expect("16-byte tag");
        Cipher::new(kek)
            .open_in_place(
                &WRAP_NONCE,
                &header.wrap_aad(),
                file_key.as_mut_slice(),
                &tag,
            )
            .map_err(|_| BundleError::WrongPasswordOrModifiedHeader)?;
        if let Some(expires) = header.expires {
            if options.now >= expires && !options.allow_expired {
                return Err(BundleError::Expired {
                    expires,
                    now: options.now,
                });
            }
        }
        let key = payload_key(file_key.as_slice(), &header.payload_salt);
        Ok(BundleReader {
            stream: StreamOpener::new(&key, source),
            header,
        })
    }
}

/// Why a payload could not be parsed: the bundle failed under the parser
/// (the stream's own error, not what the parser made of it), or the parser
/// refused what it read.
#[derive(Debug, Error)]
pub enum PayloadFailure<E> {
    #[error(transparent)]
    Bundle(BundleError),
    #[error(transparent)]
    Parse(E),
}

/// An unlocked bundle: its authenticated header, and the payload as a
/// reader (`Read` and `BufRead`) that yields only authenticated plaintext.
pub struct BundleReader<R: BufRead> {
    header: Header,
    stream: StreamOpener<Source<R>>,
}

impl<R: BufRead> BundleReader<R> {
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads to the end of the payload, failing if plaintext remains; this
    /// also authenticates the final chunk.
    pub fn expect_end(&mut self) -> Result<(), BundleError> {
        self.stream.expect_end()
    }

    /// The error behind the last failed read, typed (see
    /// [`StreamOpener::take_error`]).
    pub fn take_error(&mut self) -> Option<BundleError> {
        self.stream.take_error()
    }

    /// Text around the armor that is not part of the bundle; complete once
    /// the payload was read to its end ([`expect_end`](Self::expect_end),
    /// [`parse_payload`](Self::parse_payload)).
    pub fn ignored(&self) -> Ignored {
        self.stream.input().ignored()
    }

    /// Runs `parse` over the payload, then checks that the payload ends
    /// where `parse` stopped (which authenticates the final chunk). If the
    /// stream failed under `parse`, the stream's error is returned.
    pub fn parse_payload<T, E>(
        &mut self,
        parse: impl FnOnce(&mut dyn BufRead) -> Result<T, E>,
    ) -> Result<T, PayloadFailure<E>> {
        let parsed = parse(&mut self.stream);
        if let Some(e) = self.stream.take_error() {
            return Err(PayloadFailure::Bundle(e));
        }
        let value = parsed.map_err(PayloadFailure::Parse)?;
        self.stream.expect_end().map_err(PayloadFailure::Bundle)?;
        Ok(value)
    }
}

impl<R: BufRead> Read for BundleReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl<R: BufRead> BufRead for BundleReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.stream.fill_buf()
    }
    fn consume(&mut self, amount: usize) {
        self.stream.consume(amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEK: [u8; 32] = [3; 32];
    const OPTIONS: OpenOptions = OpenOptions {
        now: 10,
        allow_expired: false,
    };

    fn sealed(payload: &[u8], kdf: KdfParams) -> Vec<u8> {
        let params = SealParams {
            kdf,
            created: 1,
            expires: None,
            armor: false,
        };
        let mut w = seal_with_kek(&KEK, [9; 16], &params, Vec::new()).unwrap();
        w.write_all(payload).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn limits_are_checked_by_read_header_and_not_by_inspect() {
        let greedy = KdfParams {
            memory_kib: 2 * 1024 * 1024,
            ..KdfParams::DEFAULT
        };
        let bytes = sealed(b"x", greedy);
        assert!(matches!(
            read_header(&bytes[..], &KdfLimits::default()),
            Err(BundleError::Kdf(KdfError::OverLimit { .. }))
        ));
        let shown = inspect(&bytes[..]).unwrap();
        assert_eq!(shown.header.kdf, greedy);
        assert!(!shown.armored);
    }

    #[test]
    fn a_failure_under_the_payload_parser_is_the_bundle_error() {
        let payload = vec![1u8; 3 * CHUNK_SIZE];
        let mut bytes = sealed(&payload, KdfParams::MINIMUM);
        bytes[HEADER_LEN + stream::SEALED_CHUNK_SIZE + 5] ^= 1;
        let mut reader = read_header(&bytes[..], &KdfLimits::default())
            .unwrap()
            .unlock_with_kek(&KEK, &OPTIONS)
            .unwrap();
        // A parser that turns every read error into its own.
        let result = reader.parse_payload(|plain| {
            io::copy(plain, &mut io::sink()).map_err(|_| "the parser's own error")
        });
        assert!(matches!(
            result,
            Err(PayloadFailure::Bundle(BundleError::ModifiedChunk(1)))
        ));
    }

    #[test]
    fn a_payload_must_end_where_its_parser_stops() {
        let bytes = sealed(b"expected and more", KdfParams::MINIMUM);
        let mut reader = read_header(&bytes[..], &KdfLimits::default())
            .unwrap()
            .unlock_with_kek(&KEK, &OPTIONS)
            .unwrap();
        let result = reader.parse_payload(|plain| {
            let mut first = [0u8; 8];
            plain.read_exact(&mut first).map(|()| first)
        });
        assert!(matches!(
            result,
            Err(PayloadFailure::Bundle(BundleError::ExtraPayload))
        ));
    }

    #[test]
    fn a_broken_armor_line_is_the_armor_error() {
        let params = SealParams {
            kdf: KdfParams::MINIMUM,
            created: 1,
            expires: None,
            armor: true,
        };
        let mut w = seal_with_kek(&KEK, [9; 16], &params, Vec::new()).unwrap();
        w.write_all(&[5u8; 1000]).unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        // Break a data line well inside the payload.
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[10].replace_range(0..1, "*");
        let broken = lines.join("\n");
        let mut reader = read_header(broken.as_bytes(), &KdfLimits::default())
            .unwrap()
            .unlock_with_kek(&KEK, &OPTIONS)
            .unwrap();
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
        assert!(
            matches!(reader.take_error(), Some(BundleError::Armor(m)) if m.contains("line 11")),
        );
    }
}
