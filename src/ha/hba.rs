//! `pg_hba.conf`: keyferry's marked block per peer, and a tolerant reader for
//! everything else.
//!
//! # The block
//!
//! For each peer keyferry owns exactly one block, and nothing outside it:
//!
//! ```text
//! # BEGIN keyferry peer 10.0.0.2
//! # Managed by keyferry (keyferry hba ensure / keyferry hba remove); edits inside this block are overwritten.
//! host    replication     repuser         10.0.0.2/32             scram-sha-256
//! host    all             all             10.0.0.2/32             scram-sha-256
//! # END keyferry peer 10.0.0.2
//! ```
//!
//! A marker is a line that, after optional blanks, reads `# BEGIN keyferry`
//! or `# END keyferry` (any blanks between `#` and the word), followed by
//! `peer <IP>` and optional trailing blanks. The IP is compared as an
//! address, not as text. A line that starts like a marker but does not go on
//! like one is an error, never ignored: the markers are the only thing that
//! tells keyferry which lines are its own.
//!
//! # Invariants
//!
//! - Every byte outside keyferry's blocks is kept: comments, order, blank
//!   lines, odd spacing, include directives, bytes that are not UTF-8, and
//!   whether the file ends with a newline. For any file `x`,
//!   `remove(ensure(x, p).text, p).text == x`.
//! - New blocks are appended at the end of the file, in the file's dominant
//!   line-ending style (CRLF when CRLF-terminated lines outnumber LF-only
//!   ones, else LF). When the file does not end with a newline, the block is
//!   preceded by one and itself ends without one, so the file keeps its
//!   "no final newline" shape and removal can restore it exactly.
//! - [`ensure`] is idempotent; with another user or method it rewrites the
//!   block in place.
//! - A file whose markers are broken (BEGIN without END, END without BEGIN,
//!   nested or duplicate blocks, unreadable markers) is refused with
//!   [`Error::HbaMarkers`] rather than edited by guesswork.
//!
//! Hand-written lines that already allow what keyferry's two would
//! ([`equivalent_lines`], as the vendor's troubleshooting steps tell
//! operators to add) are left alone by the caller; [`adopt`] moves them into
//! keyferry's block, which takes the place of the first of them, keeping
//! every other byte.
//!
//! Appending means that an earlier line matching the peer (for example a
//! `reject` rule) still wins, because PostgreSQL uses the first matching
//! line; [`rules_mentioning`] finds such lines so the caller can warn.

use std::fmt;
use std::net::IpAddr;

use crate::ha::addr::PeerAddr;
use crate::ha::error::{Error, MarkerProblem};

/// Word after `#` that opens a block.
const BEGIN_WORD: &str = "BEGIN";
/// Word after `#` that closes a block.
const END_WORD: &str = "END";
/// Identifies keyferry's markers among other BEGIN/END comments.
const MARKER_OWNER: &str = "keyferry";
/// What the block is keyed by.
const MARKER_KIND: &str = "peer";
/// Second line of every block, for the operator reading the file by hand.
const BLOCK_NOTE: &str = "# Managed by keyferry (keyferry hba ensure / keyferry hba remove); edits inside this block are overwritten.";
/// PostgreSQL's NAMEDATALEN - 1: longest role name in bytes.
const MAX_ROLE_NAME_BYTES: usize = 63;
/// Words that mean something else than a role in the user column of
/// `pg_hba.conf` (or in the database column, for `replication`).
const HBA_USER_KEYWORDS: [&str; 5] = ["all", "sameuser", "samerole", "samegroup", "replication"];

/// The password authentication method written into keyferry's lines.
///
/// The command line parses `--method` straight into this type
/// (`clap::ValueEnum`), so the accepted words are defined here once and
/// match [`HbaMethod::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HbaMethod {
    /// `scram-sha-256`, the default and what PostgreSQL recommends.
    #[default]
    #[value(name = "scram-sha-256")]
    ScramSha256,
    /// `md5`, for pairs whose stored passwords are still MD5 hashes.
    #[value(name = "md5")]
    Md5,
}

impl HbaMethod {
    /// The keyword as written in `pg_hba.conf`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha256 => "scram-sha-256",
            Self::Md5 => "md5",
        }
    }
}

impl fmt::Display for HbaMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of an edit: the whole new file and whether it differs from the old.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The complete new file content.
    pub text: Vec<u8>,
    /// `false` when `text` is byte-for-byte the input.
    pub changed: bool,
}

/// One keyferry block found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedBlock {
    /// The peer named by the markers.
    pub peer: IpAddr,
    /// 1-based line of the BEGIN marker.
    pub begin_line: usize,
    /// 1-based line of the END marker.
    pub end_line: usize,
    /// The records between the markers, as PostgreSQL would read them.
    pub records: Vec<HbaRecord>,
}

impl ManagedBlock {
    /// Whether the block holds exactly what [`ensure`] would write for
    /// `repuser` and `method`.
    pub fn is_current(&self, repuser: &str, method: HbaMethod) -> bool {
        let Ok(peer) = PeerAddr::try_from(self.peer) else {
            return false;
        };
        let expected = block_rules(&peer, repuser, method);
        self.records.len() == expected.len()
            && self.records.iter().zip(&expected).all(|(record, line)| {
                let words: Vec<&str> = line.split_whitespace().collect();
                record.plain_words() == words
            })
    }
}

/// Makes sure `text` holds the block for `peer` allowing `repuser` to
/// replicate and all users to connect to all databases from `peer` with
/// `method`. See the module docs for where and how it is written.
pub fn ensure(
    text: &[u8],
    peer: &PeerAddr,
    repuser: &str,
    method: HbaMethod,
) -> Result<Edit, Error> {
    validate_role_name(repuser)?;
    let lines = split_lines(text);
    let blocks = scan(text, &lines)?;
    let eol = dominant_eol(&lines, &blocks);
    let wanted = block_text(peer, repuser, method, eol);

    if let Some(block) = blocks.iter().find(|b| b.peer == peer.ip()) {
        // Rewrite in place; the END line's own terminator (or its absence)
        // is kept so the end of the file keeps its shape.
        let start = lines[block.begin].start;
        let end = lines[block.end].content_end;
        if text[start..end] == wanted[..] {
            return Ok(unchanged(text));
        }
        let mut out = Vec::with_capacity(text.len() + wanted.len());
        out.extend_from_slice(&text[..start]);
        out.extend_from_slice(&wanted);
        out.extend_from_slice(&text[end..]);
        return Ok(Edit {
            text: out,
            changed: true,
        });
    }

    let mut out = Vec::with_capacity(text.len() + wanted.len() + 2 * eol.len());
    out.extend_from_slice(text);
    if text.is_empty() || text.ends_with(b"\n") {
        out.extend_from_slice(&wanted);
        out.extend_from_slice(eol);
    } else {
        out.extend_from_slice(eol);
        out.extend_from_slice(&wanted);
    }
    Ok(Edit {
        text: out,
        changed: true,
    })
}

/// Removes the block for `peer`, restoring the bytes as they were before
/// [`ensure`] added it. No block for `peer` is not an error: nothing changes.
pub fn remove(text: &[u8], peer: &PeerAddr) -> Result<Edit, Error> {
    let lines = split_lines(text);
    let blocks = scan(text, &lines)?;
    let Some(block) = blocks.iter().find(|b| b.peer == peer.ip()) else {
        return Ok(unchanged(text));
    };
    let end_line = &lines[block.end];
    let mut start = lines[block.begin].start;
    let end = end_line.end;
    if end_line.end == end_line.content_end && block.begin > 0 {
        // The block is the unterminated tail of the file: ensure put a
        // line terminator before it, which goes with it. That terminator
        // is the one ensure used inside the block (the BEGIN line's); the
        // previous line's own split can mislead when the file ended in a
        // lone CR ("a\r" + "\n" reads as one CRLF).
        let begin = &lines[block.begin];
        let eol = &text[begin.content_end..begin.end];
        start = if text[..start].ends_with(eol) {
            start - eol.len()
        } else {
            lines[block.begin - 1].content_end
        };
    }
    let mut out = Vec::with_capacity(text.len());
    out.extend_from_slice(&text[..start]);
    out.extend_from_slice(&text[end..]);
    Ok(Edit {
        text: out,
        changed: true,
    })
}

/// Lists keyferry's blocks in file order.
pub fn managed_blocks(text: &[u8]) -> Result<Vec<ManagedBlock>, Error> {
    let lines = split_lines(text);
    let blocks = scan(text, &lines)?;
    let records = tokenize(text);
    Ok(blocks
        .iter()
        .map(|b| {
            let (first, last) = (b.begin + 1, b.end + 1);
            ManagedBlock {
                peer: b.peer,
                begin_line: first,
                end_line: last,
                records: records
                    .iter()
                    .filter(|r| r.line > first && r.line < last)
                    .cloned()
                    .collect(),
            }
        })
        .collect())
}

/// Hand-written lines, outside keyferry's blocks, that allow exactly what
/// keyferry's two lines for a peer allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Equivalents {
    /// 1-based line equivalent to `host replication <repuser> PEER/32 <method>`.
    pub replication: usize,
    /// 1-based line equivalent to `host all all PEER/32 <method>`.
    pub all: usize,
}

/// Finds hand-written lines equivalent to the two that [`ensure`] would
/// write for `peer`: type `host` or `hostssl`; database `replication`
/// (resp. `all`); user `repuser` or `all` (resp. `all`); the peer alone as
/// `IP/32`, `IP/128` or IP with an all-ones netmask; the same method and
/// no options. A record continued over several lines is not considered.
/// `None` when the file already has keyferry's block for `peer`, or when
/// either of the two has no equivalent.
pub fn equivalent_lines(
    text: &[u8],
    peer: &PeerAddr,
    repuser: &str,
    method: HbaMethod,
) -> Result<Option<Equivalents>, Error> {
    validate_role_name(repuser)?;
    let lines = split_lines(text);
    let blocks = scan(text, &lines)?;
    if blocks.iter().any(|b| b.peer == peer.ip()) {
        return Ok(None);
    }
    let records: Vec<HbaRecord> = tokenize(text)
        .into_iter()
        .filter(|r| {
            let index = r.line - 1;
            let inside = blocks.iter().any(|b| (b.begin..=b.end).contains(&index));
            let line = lines[index];
            let continued = text[line.start..line.content_end]
                .trim_ascii_end()
                .ends_with(b"\\");
            !inside && !continued
        })
        .collect();
    let find = |database: &str, users: &[&str]| {
        records
            .iter()
            .find(|r| is_equivalent(r, peer.ip(), database, users, method))
            .map(|r| r.line)
    };
    Ok(
        match (
            find("replication", &[repuser, "all"]),
            find("all", &["all"]),
        ) {
            (Some(replication), Some(all)) => Some(Equivalents { replication, all }),
            _ => None,
        },
    )
}

/// Whether `record` allows exactly what keyferry's line for `database`
/// allows (see [`equivalent_lines`]).
fn is_equivalent(
    record: &HbaRecord,
    peer: IpAddr,
    database: &str,
    users: &[&str],
    method: HbaMethod,
) -> bool {
    let single = |i: usize| match record.fields.get(i).map(Vec::as_slice) {
        Some([token]) => Some(token),
        _ => None,
    };
    // A quoted word is a name, never the keyword.
    let keyword = |i: usize, word: &str| single(i).is_some_and(|t| !t.quoted && t.text == word);
    let user_ok = single(2).is_some_and(|t| {
        users
            .iter()
            .any(|u| t.text == *u && !(t.quoted && HBA_USER_KEYWORDS.contains(u)))
    });
    let exact = coverage(record, peer) == Some(Coverage::Exact);
    let method_field = match single(3) {
        Some(t) if !t.quoted && t.text.contains('/') => Some(4),
        Some(t) if !t.quoted => single(4)
            .and_then(|mask| mask.text.parse::<IpAddr>().ok())
            .filter(|mask| same_family(*mask, peer) && mask_prefix(*mask) == host_prefix(*mask))
            .map(|_| 5),
        _ => None,
    };
    (keyword(0, "host") || keyword(0, "hostssl"))
        && keyword(1, database)
        && user_ok
        && exact
        && method_field.is_some_and(|m| record.fields.len() == m + 1 && keyword(m, method.as_str()))
}

/// Moves the lines [`equivalent_lines`] finds into keyferry's block for
/// `peer`: the block (exactly what [`ensure`] writes) takes the place of the
/// first of them, the second goes, and every other byte is kept. Without
/// such lines it is [`ensure`]. Returns the edit and the lines moved.
pub fn adopt(
    text: &[u8],
    peer: &PeerAddr,
    repuser: &str,
    method: HbaMethod,
) -> Result<(Edit, Option<Equivalents>), Error> {
    let Some(found) = equivalent_lines(text, peer, repuser, method)? else {
        return Ok((ensure(text, peer, repuser, method)?, None));
    };
    let lines = split_lines(text);
    let blocks = scan(text, &lines)?;
    let eol = dominant_eol(&lines, &blocks);
    let first = found.replication.min(found.all) - 1;
    let second = found.replication.max(found.all) - 1;
    let mut out = Vec::with_capacity(text.len() + 256);
    for (index, line) in lines.iter().enumerate() {
        if index == first {
            out.extend_from_slice(&block_text(peer, repuser, method, eol));
            out.extend_from_slice(&text[line.content_end..line.end]);
        } else if index != second {
            out.extend_from_slice(&text[line.start..line.end]);
        } else if line.end == line.content_end {
            // The unterminated last line goes: so does the terminator
            // before it, and the file keeps its "no final newline" shape.
            let previous = lines[index - 1];
            out.truncate(out.len() - (previous.end - previous.content_end));
        }
    }
    Ok((
        Edit {
            text: out,
            changed: true,
        },
        Some(found),
    ))
}

/// Checks that `name` can be written unquoted into the user column of
/// `pg_hba.conf` and means one role both there and in SQL.
pub(crate) fn validate_role_name(name: &str) -> Result<(), Error> {
    let refuse = |reason| Error::RoleName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(refuse("is empty"));
    }
    if name.len() > MAX_ROLE_NAME_BYTES {
        return Err(refuse("is longer than PostgreSQL's 63-byte limit"));
    }
    if HBA_USER_KEYWORDS.contains(&name) {
        return Err(refuse("is a pg_hba.conf keyword, not a role"));
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        // Unquoted SQL folds to lower case but pg_hba.conf does not, so
        // `CREATE ROLE RepUser` and a `RepUser` line would not match.
        return Err(refuse(
            "has upper-case letters, which SQL folds to lower case but pg_hba.conf does not",
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !(first_ok && rest_ok) {
        return Err(refuse(
            "must start with a letter or '_' and hold only lower-case letters, digits and '_'",
        ));
    }
    Ok(())
}

fn unchanged(text: &[u8]) -> Edit {
    Edit {
        text: text.to_vec(),
        changed: false,
    }
}

fn begin_marker(peer: &PeerAddr) -> String {
    format!("# {BEGIN_WORD} {MARKER_OWNER} {MARKER_KIND} {peer}")
}

fn end_marker(peer: &PeerAddr) -> String {
    format!("# {END_WORD} {MARKER_OWNER} {MARKER_KIND} {peer}")
}

/// The two rules, laid out in the columns of PostgreSQL's sample file.
fn block_rules(peer: &PeerAddr, repuser: &str, method: HbaMethod) -> [String; 2] {
    let cidr = peer.hba_cidr();
    let rule = |database: &str, user: &str| {
        format!(
            "{:<7} {:<15} {:<15} {:<23} {}",
            "host", database, user, cidr, method
        )
    };
    [rule("replication", repuser), rule("all", "all")]
}

/// The whole block, its lines joined by `eol`, without a final terminator.
fn block_text(peer: &PeerAddr, repuser: &str, method: HbaMethod, eol: &[u8]) -> Vec<u8> {
    let mut text = Vec::new();
    for (i, line) in block_lines(peer, repuser, method).iter().enumerate() {
        if i > 0 {
            text.extend_from_slice(eol);
        }
        text.extend_from_slice(line.as_bytes());
    }
    text
}

fn block_lines(peer: &PeerAddr, repuser: &str, method: HbaMethod) -> Vec<String> {
    let [replication, all] = block_rules(peer, repuser, method);
    vec![
        begin_marker(peer),
        BLOCK_NOTE.to_owned(),
        replication,
        all,
        end_marker(peer),
    ]
}

/// One physical line: `text[start..content_end]` is its content without the
/// terminator, `text[content_end..end]` is `\n`, `\r\n` or empty (last line).
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    content_end: usize,
    end: usize,
}

fn split_lines(text: &[u8]) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let (content_end, end) = match text[start..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let newline = start + offset;
                let content_end = if newline > start && text[newline - 1] == b'\r' {
                    newline - 1
                } else {
                    newline
                };
                (content_end, newline + 1)
            }
            None => (text.len(), text.len()),
        };
        lines.push(Line {
            start,
            content_end,
            end,
        });
        start = end;
    }
    lines
}

/// CRLF when CRLF-terminated lines outnumber LF-terminated ones; LF otherwise
/// (including files with no terminated line at all). Lines inside keyferry's
/// blocks do not count: they are ours, and counting them would let a
/// rewritten block change the verdict, so that a second `ensure` rewrote it
/// again (found by fuzzing, `tests/vectors/hba/regressions/`). Nor does the
/// line before the blocks that end the file unterminated: `ensure` gave that
/// line its terminator when it appended the first of them (a lone CR then
/// reads as CRLF), and it stays the line before them however many blocks
/// are appended after (`finding-3.bin`: counting it once the second block
/// came flipped the verdict).
fn dominant_eol(lines: &[Line], blocks: &[BlockSpan]) -> &'static [u8] {
    let (mut crlf, mut lf) = (0usize, 0usize);
    let appended_after = unterminated_tail_start(lines, blocks)
        .filter(|begin| *begin > 0)
        .map(|begin| begin - 1);
    let ours = |i: usize| {
        appended_after == Some(i) || blocks.iter().any(|b| (b.begin..=b.end).contains(&i))
    };
    for (_, line) in lines.iter().enumerate().filter(|(i, _)| !ours(*i)) {
        match line.end - line.content_end {
            2 => crlf += 1,
            1 => lf += 1,
            _ => {}
        }
    }
    if crlf > lf {
        b"\r\n"
    } else {
        b"\n"
    }
}

/// Where the run of blocks that ends the file unterminated begins: the last
/// block's END line has no terminator, and each block before it in the run
/// ends on the line before the next one begins (as repeated `ensure` calls
/// on an unterminated file leave them).
fn unterminated_tail_start(lines: &[Line], blocks: &[BlockSpan]) -> Option<usize> {
    let last = blocks.iter().max_by_key(|b| b.begin)?;
    let end = &lines[last.end];
    if end.end != end.content_end {
        return None;
    }
    let mut begin = last.begin;
    while let Some(prev) = blocks.iter().find(|b| b.end + 1 == begin) {
        begin = prev.begin;
    }
    Some(begin)
}

/// A block as line indexes (0-based) into the split file.
#[derive(Debug, Clone, Copy)]
struct BlockSpan {
    peer: IpAddr,
    begin: usize,
    end: usize,
}

enum Marker {
    Begin(IpAddr),
    End(IpAddr),
}

/// Reads a marker line. `Ok(None)`: not a marker; `Err`: starts like one but
/// cannot be read.
fn parse_marker(content: &[u8]) -> Result<Option<Marker>, MarkerProblem> {
    // Markers are ASCII; lossy decoding keeps a line with stray bytes from
    // passing as a marker (its IP then fails to parse) without failing on
    // ordinary non-UTF-8 comments.
    let content = String::from_utf8_lossy(content);
    let Some(after_hash) = content.trim_start_matches([' ', '\t']).strip_prefix('#') else {
        return Ok(None);
    };
    let mut words = after_hash.split_ascii_whitespace();
    let begin = match (words.next(), words.next()) {
        (Some(BEGIN_WORD), Some(MARKER_OWNER)) => true,
        (Some(END_WORD), Some(MARKER_OWNER)) => false,
        _ => return Ok(None),
    };
    let peer = match (words.next(), words.next(), words.next()) {
        (Some(MARKER_KIND), Some(ip), None) => ip
            .parse::<IpAddr>()
            .map_err(|_| MarkerProblem::Unreadable)?,
        _ => return Err(MarkerProblem::Unreadable),
    };
    Ok(Some(if begin {
        Marker::Begin(peer)
    } else {
        Marker::End(peer)
    }))
}

/// Finds keyferry's blocks, refusing any file whose markers are not a
/// sequence of well-formed, non-nested, unique BEGIN/END pairs.
fn scan(text: &[u8], lines: &[Line]) -> Result<Vec<BlockSpan>, Error> {
    let broken = |index: usize, problem| Error::HbaMarkers {
        line: index + 1,
        problem,
    };
    let mut blocks: Vec<BlockSpan> = Vec::new();
    let mut open: Option<(IpAddr, usize)> = None;
    for (index, line) in lines.iter().enumerate() {
        let marker =
            parse_marker(&text[line.start..line.content_end]).map_err(|p| broken(index, p))?;
        match (marker, open) {
            (None, _) => {}
            (Some(Marker::Begin(_)), Some((open_peer, _))) => {
                return Err(broken(
                    index,
                    MarkerProblem::Nested {
                        open: open_peer.to_string(),
                    },
                ));
            }
            (Some(Marker::Begin(peer)), None) => {
                if let Some(first) = blocks.iter().find(|b| b.peer == peer) {
                    return Err(broken(
                        index,
                        MarkerProblem::Duplicate {
                            peer: peer.to_string(),
                            first_line: first.begin + 1,
                        },
                    ));
                }
                open = Some((peer, index));
            }
            (Some(Marker::End(peer)), None) => {
                return Err(broken(
                    index,
                    MarkerProblem::EndWithoutBegin {
                        peer: peer.to_string(),
                    },
                ));
            }
            (Some(Marker::End(peer)), Some((open_peer, begin))) => {
                if peer != open_peer {
                    return Err(broken(
                        index,
                        MarkerProblem::MismatchedEnd {
                            open: open_peer.to_string(),
                            end: peer.to_string(),
                        },
                    ));
                }
                blocks.push(BlockSpan {
                    peer,
                    begin,
                    end: index,
                });
                open = None;
            }
        }
    }
    if let Some((peer, begin)) = open {
        return Err(broken(
            begin,
            MarkerProblem::BeginWithoutEnd {
                peer: peer.to_string(),
            },
        ));
    }
    Ok(blocks)
}

// ---------------------------------------------------------------------------
// Tolerant reader
// ---------------------------------------------------------------------------

/// One token of a field, as PostgreSQL reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaToken {
    /// The token with quoting removed (`""` inside quotes becomes `"`).
    pub text: String,
    /// Whether any part was double-quoted; a quoted `"all"` is a name, not
    /// the keyword.
    pub quoted: bool,
}

/// One logical record of `pg_hba.conf`: its fields, each a comma-separated
/// list of tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRecord {
    /// 1-based physical line where the record starts.
    pub line: usize,
    /// The fields in order (`host`, databases, users, address, ...).
    pub fields: Vec<Vec<HbaToken>>,
}

impl HbaRecord {
    /// The connection type or directive (`local`, `host`, `include`, …).
    pub(crate) fn kind(&self) -> Option<&str> {
        self.word(0)
    }

    /// Whether a `host*` record can decide a connection of the replication
    /// role `user`: a replication connection, or an SQL one to the
    /// maintenance database (the two keyferry's block lets in). A line
    /// for other roles or other databases only (an application's) cannot
    /// shadow keyferry's lines, so it is not warned about. A group
    /// (`+role`), a file (`@file`) or `samerole`/`sameuser` cannot be
    /// resolved here and counts as possibly matching.
    pub(crate) fn may_decide_for(&self, user: &str) -> bool {
        let unknown =
            |t: &HbaToken| !t.quoted && (t.text.starts_with('@') || t.text.starts_with('+'));
        let keyword = |t: &HbaToken, k: &str| !t.quoted && t.text == k;
        let users = self.fields.get(2).map_or(&[][..], Vec::as_slice);
        let databases = self.fields.get(1).map_or(&[][..], Vec::as_slice);
        let user_matches = users
            .iter()
            .any(|t| keyword(t, "all") || unknown(t) || t.text == user);
        let database_matches = databases.iter().any(|t| {
            ["all", "replication", "sameuser", "samerole"]
                .iter()
                .any(|k| keyword(t, k))
                || unknown(t)
                || t.text == crate::pg::MAINTENANCE_DB
        });
        user_matches && database_matches
    }

    /// The first token of field `index`, if any.
    pub(crate) fn word(&self, index: usize) -> Option<&str> {
        self.fields.get(index)?.first().map(|t| t.text.as_str())
    }

    /// Whether this is a `host*` record, which has an address field.
    pub(crate) fn is_host_record(&self) -> bool {
        self.kind().is_some_and(|k| k.starts_with("host"))
    }

    /// The address field of a `host*` record.
    pub(crate) fn address(&self) -> Option<&str> {
        if self.is_host_record() {
            self.word(3)
        } else {
            None
        }
    }

    /// The authentication method: the field after the address (and after
    /// the netmask when the address is given as IP plus mask).
    #[cfg(test)]
    fn method(&self) -> Option<&str> {
        if !self.is_host_record() {
            return match self.kind() {
                Some("local") => self.word(3),
                _ => None,
            };
        }
        let address = self.address()?;
        let separate_mask = !address.contains('/') && address.parse::<IpAddr>().is_ok();
        self.word(if separate_mask { 5 } else { 4 })
    }

    /// Every token's text, unquoted, in order: a flat view for comparisons
    /// and display.
    pub(crate) fn plain_words(&self) -> Vec<&str> {
        self.fields
            .iter()
            .flatten()
            .map(|t| t.text.as_str())
            .collect()
    }
}

/// Connection types (and directives) a `pg_hba.conf` record may start
/// with, and the fewest fields each needs.
const RECORD_KINDS: [(&str, usize); 9] = [
    ("local", 4),
    ("host", 5),
    ("hostssl", 5),
    ("hostnossl", 5),
    ("hostgssenc", 5),
    ("hostnogssenc", 5),
    ("include", 2),
    ("include_if_exists", 2),
    ("include_dir", 2),
];

/// Why `text` does not read as a `pg_hba.conf`: the first record that
/// starts with no connection type PostgreSQL knows, or has too few fields
/// for its type; `None` when every record reads as one. The reason names
/// the line, never its content: the wrong file (a password file) may hold
/// secrets.
pub fn not_hba_reason(text: &[u8]) -> Option<String> {
    if text.contains(&0) {
        return Some("it holds NUL bytes, which no pg_hba.conf does".into());
    }
    for r in tokenize(text) {
        let kind = r.kind().unwrap_or("");
        // Lines of the packaged sample template (`@authcomment@`,
        // `@remove-line-for-nolocal@local …`), which initdb fills in: the
        // file an operator edits is often a copy of it.
        let template = kind
            .strip_prefix('@')
            .is_some_and(|rest| rest.contains('@'));
        if template {
            continue;
        }
        match RECORD_KINDS.iter().find(|(k, _)| *k == kind) {
            None => {
                return Some(format!(
                    "line {} does not start with a connection type (local, host, hostssl, hostnossl, hostgssenc, hostnogssenc)",
                    r.line
                ))
            }
            Some((_, min)) if r.fields.len() < *min => {
                return Some(format!(
                    "line {} has {} fields, too few for a {kind} record",
                    r.line,
                    r.fields.len()
                ))
            }
            Some(_) => {}
        }
    }
    None
}

/// Reads every record of a `pg_hba.conf` the way PostgreSQL's tokenizer
/// does: backslash at the very end of a line continues it, `#` outside
/// quotes starts a comment, fields are separated by blanks, tokens within a
/// field by commas, and double quotes protect blanks, commas and `#` (a
/// doubled `""` inside quotes is a literal quote). Never fails: bytes that
/// are not UTF-8 are shown as U+FFFD, and an unterminated quote ends at the
/// end of the line.
pub fn tokenize(text: &[u8]) -> Vec<HbaRecord> {
    let lines = split_lines(text);
    let mut records = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let first = index;
        let mut logical: Vec<u8> = Vec::new();
        loop {
            let line = lines[index];
            let mut content = &text[line.start..line.content_end];
            // PostgreSQL strips any trailing CR/LF before looking for the
            // continuation backslash.
            while let Some(rest) = content.strip_suffix(b"\r") {
                content = rest;
            }
            index += 1;
            match content.strip_suffix(b"\\") {
                Some(head) if index < lines.len() => logical.extend_from_slice(head),
                Some(head) => {
                    logical.extend_from_slice(head);
                    break;
                }
                None => {
                    logical.extend_from_slice(content);
                    break;
                }
            }
        }
        let fields = tokenize_line(&String::from_utf8_lossy(&logical));
        if !fields.is_empty() {
            records.push(HbaRecord {
                line: first + 1,
                fields,
            });
        }
    }
    records
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | '\u{b}' | '\u{c}')
}

/// Splits one logical line into fields of tokens (PostgreSQL's
/// `next_field_expand` / `next_token`, without expanding `@file`).
fn tokenize_line(line: &str) -> Vec<Vec<HbaToken>> {
    let chars: Vec<char> = line.chars().collect();
    let mut pos = 0;
    let mut fields = Vec::new();
    loop {
        let mut field = Vec::new();
        // A field goes on while its tokens end in an unquoted comma.
        while let Some((token, terminating_comma)) = next_token(&chars, &mut pos) {
            field.push(token);
            if !terminating_comma {
                break;
            }
        }
        if field.is_empty() {
            break;
        }
        fields.push(field);
    }
    fields
}

/// One token starting at `pos`: `None` at end of line or at a comment.
fn next_token(chars: &[char], pos: &mut usize) -> Option<(HbaToken, bool)> {
    while *pos < chars.len() && (is_blank(chars[*pos]) || chars[*pos] == ',') {
        *pos += 1;
    }
    let mut text = String::new();
    let (mut in_quote, mut was_quote, mut saw_quote) = (false, false, false);
    let mut terminating_comma = false;
    while *pos < chars.len() {
        let c = chars[*pos];
        if is_blank(c) && !in_quote {
            break;
        }
        if c == '#' && !in_quote {
            // A comment runs to the end of the line.
            *pos = chars.len();
            break;
        }
        *pos += 1;
        if c == ',' && !in_quote {
            terminating_comma = true;
            break;
        }
        if c != '"' || was_quote {
            text.push(c);
        }
        was_quote = in_quote && c == '"' && !was_quote;
        if c == '"' {
            in_quote = !in_quote;
            saw_quote = true;
        }
    }
    if saw_quote || !text.is_empty() {
        Some((
            HbaToken {
                text,
                quoted: saw_quote,
            },
            terminating_comma,
        ))
    } else {
        None
    }
}

/// How a record's address covers the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coverage {
    /// The record names exactly the peer's address (`IP`, `IP/32`, `IP/128`
    /// or IP with an all-ones mask).
    Exact,
    /// The record names a network that contains the peer.
    Network,
}

/// A record outside keyferry's blocks whose address covers the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerMention {
    /// The record.
    pub record: HbaRecord,
    /// Whether it names the peer alone or a network around it.
    pub coverage: Coverage,
}

/// Records outside keyferry's blocks whose IP address field covers `peer`.
/// Records with `all`, `samehost`, `samenet` or host names are not
/// reported: they depend on the server's interfaces or on DNS.
pub(crate) fn rules_mentioning(text: &[u8], peer: &PeerAddr) -> Result<Vec<PeerMention>, Error> {
    let blocks = managed_blocks(text)?;
    let inside = |line: usize| {
        blocks
            .iter()
            .any(|b| line >= b.begin_line && line <= b.end_line)
    };
    Ok(tokenize(text)
        .into_iter()
        .filter(|r| !inside(r.line))
        .filter_map(|record| {
            let coverage = coverage(&record, peer.ip())?;
            Some(PeerMention { record, coverage })
        })
        .collect())
}

fn coverage(record: &HbaRecord, peer: IpAddr) -> Option<Coverage> {
    let address = record.address()?;
    let (network, prefix) = match address.split_once('/') {
        Some((ip, prefix)) => (ip.parse::<IpAddr>().ok()?, prefix.parse::<u8>().ok()?),
        None => {
            let ip = address.parse::<IpAddr>().ok()?;
            let mask = record.word(4)?.parse::<IpAddr>().ok();
            (ip, mask.map_or(host_prefix(ip), mask_prefix))
        }
    };
    let bits = host_prefix(network);
    if prefix > bits || !same_family(network, peer) {
        return None;
    }
    let (net, addr) = (as_bits(network), as_bits(peer));
    let shift = u32::from(bits - prefix);
    let matches = shift >= 128 || (net >> shift) == (addr >> shift);
    match (matches, prefix == bits) {
        (false, _) => None,
        (true, true) => Some(Coverage::Exact),
        (true, false) => Some(Coverage::Network),
    }
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn as_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Leading one bits of a netmask. Masks with holes are rare enough in
/// practice that counting up to the first zero is good enough for a warning.
fn mask_prefix(mask: IpAddr) -> u8 {
    let ones = match mask {
        IpAddr::V4(v4) => u32::from(v4).leading_ones(),
        IpAddr::V6(v6) => u128::from(v6).leading_ones(),
    };
    u8::try_from(ones).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../../tests/vectors/hba/pg_hba.conf.sample.pg15");
    const CRLF: &[u8] = include_bytes!("../../tests/vectors/hba/crlf.conf");
    const INCLUDES: &[u8] = include_bytes!("../../tests/vectors/hba/includes.conf");
    const NO_FINAL_NEWLINE: &[u8] = include_bytes!("../../tests/vectors/hba/no-final-newline.conf");
    const ODD_SPACING: &[u8] = include_bytes!("../../tests/vectors/hba/odd-spacing.conf");

    fn vectors() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("postgres sample", SAMPLE),
            ("crlf", CRLF),
            ("includes", INCLUDES),
            ("no final newline", NO_FINAL_NEWLINE),
            ("odd spacing", ODD_SPACING),
            ("empty", b""),
            ("only a newline", b"\n"),
            ("latin-1 comment", b"# caf\xe9\nlocal all all peer\n"),
        ]
    }

    fn peer(s: &str) -> PeerAddr {
        PeerAddr::parse(s).unwrap()
    }

    fn ensure_ok(text: &[u8], p: &PeerAddr, method: HbaMethod) -> Edit {
        ensure(text, p, "repuser", method).unwrap()
    }

    #[test]
    fn remove_after_ensure_restores_every_vector_byte_for_byte() {
        for (name, original) in vectors() {
            for p in [peer("10.0.0.2"), peer("2001:db8::2")] {
                let added = ensure_ok(original, &p, HbaMethod::ScramSha256);
                assert!(added.changed, "{name}: ensure adds a block");
                assert!(
                    added.text.starts_with(original),
                    "{name}: original bytes kept in front"
                );
                let removed = remove(&added.text, &p).unwrap();
                assert!(removed.changed, "{name}");
                assert_eq!(
                    removed.text, original,
                    "{name}: remove(ensure(x)) == x for {p}"
                );
            }
        }
    }

    #[test]
    fn a_file_ending_in_a_lone_cr_keeps_it() {
        // Found by fuzz/hba: ensure appends "\n" + block after "…\r", the
        // two read as one CRLF, and remove used to drop the CR.
        for original in [
            &b"host all all 10.1.1.1/32 md5\r"[..],
            b"a\r\nb\r\nhost all all 10.1.1.1/32 md5\r",
            b"a\nb\r",
            b"\r",
        ] {
            for method in [HbaMethod::ScramSha256, HbaMethod::Md5] {
                let p = peer("10.0.0.2");
                let added = ensure_ok(original, &p, method);
                assert_eq!(
                    remove(&added.text, &p).unwrap().text,
                    original,
                    "{:?}",
                    String::from_utf8_lossy(original)
                );
            }
        }
    }

    #[test]
    fn two_peers_come_off_in_either_order() {
        let (a, b) = (peer("10.0.0.2"), peer("10.0.0.3"));
        for (name, original) in vectors() {
            let with_a = ensure_ok(original, &a, HbaMethod::Md5).text;
            let with_both = ensure_ok(&with_a, &b, HbaMethod::Md5).text;
            let a_first = remove(&remove(&with_both, &a).unwrap().text, &b)
                .unwrap()
                .text;
            let b_first = remove(&remove(&with_both, &b).unwrap().text, &a)
                .unwrap()
                .text;
            assert_eq!(a_first, original, "{name}: a then b");
            assert_eq!(b_first, original, "{name}: b then a");
        }
    }

    /// Inputs the `hba` fuzz target once failed on: the last byte picks the
    /// peer, user and method as in `fuzz/fuzz_targets/hba.rs`.
    #[test]
    fn fuzz_regressions_keep_the_editor_invariants() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/hba/regressions");
        let peers = ["10.20.30.41", "192.168.7.2", "fd00::17", "2001:db8::1"];
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            let (selector, text) = input.split_last().unwrap();
            let p = peer(peers[usize::from(selector & 3)]);
            let user = ["repuser", "replication_user"][usize::from((selector >> 2) & 1)];
            let method = if selector & 8 == 0 {
                HbaMethod::ScramSha256
            } else {
                HbaMethod::Md5
            };
            let had_block = managed_blocks(text)
                .unwrap()
                .iter()
                .any(|b| b.peer == p.ip());
            let added = ensure(text, &p, user, method).unwrap();
            let again = ensure(&added.text, &p, user, method).unwrap();
            assert!(
                !again.changed,
                "{}: ensure is not idempotent",
                path.display()
            );
            let removed = remove(&added.text, &p).unwrap();
            if !had_block {
                assert_eq!(removed.text, text, "{}", path.display());
            }
        }
    }

    #[test]
    fn ensure_twice_changes_nothing() {
        let p = peer("10.0.0.2");
        for (name, original) in vectors() {
            let once = ensure_ok(original, &p, HbaMethod::ScramSha256);
            let twice = ensure_ok(&once.text, &p, HbaMethod::ScramSha256);
            assert!(!twice.changed, "{name}");
            assert_eq!(twice.text, once.text, "{name}");
        }
    }

    #[test]
    fn ensure_writes_the_documented_block() {
        let text = ensure_ok(
            b"local all all peer\n",
            &peer("10.0.0.2"),
            HbaMethod::ScramSha256,
        )
        .text;
        let expected = "local all all peer\n\
            # BEGIN keyferry peer 10.0.0.2\n\
            # Managed by keyferry (keyferry hba ensure / keyferry hba remove); edits inside this block are overwritten.\n\
            host    replication     repuser         10.0.0.2/32             scram-sha-256\n\
            host    all             all             10.0.0.2/32             scram-sha-256\n\
            # END keyferry peer 10.0.0.2\n";
        assert_eq!(String::from_utf8(text).unwrap(), expected);
    }

    #[test]
    fn ipv6_peers_get_a_128_bit_prefix() {
        let text = ensure_ok(b"", &peer("2001:db8::2"), HbaMethod::Md5).text;
        let records = tokenize(&text);
        assert_eq!(records.len(), 2);
        for record in &records {
            assert_eq!(record.address(), Some("2001:db8::2/128"));
            assert_eq!(record.method(), Some("md5"));
        }
    }

    /// Only a line that can decide a connection of the replication role
    /// (replication, or SQL to the maintenance database) is worth a
    /// warning; an application's line is not.
    #[test]
    fn a_line_for_other_roles_and_databases_cannot_decide_for_keyferry() {
        let decides =
            |line: &str| tokenize(format!("{line}\n").as_bytes())[0].may_decide_for("repuser");
        assert!(decides("host all all 10.0.0.0/8 reject"));
        assert!(decides("host replication repuser 10.0.0.2/32 md5"));
        assert!(decides("host postgres +admins 10.0.0.0/8 md5"));
        assert!(decides("host @dbs repuser 10.0.0.0/8 md5"));
        assert!(decides("host app,replication all 10.0.0.0/8 md5"));
        assert!(!decides("host appdb appuser 10.0.0.0/8 md5"));
        assert!(!decides("host all appuser 10.0.0.0/8 md5"));
        assert!(!decides("host appdb all 10.0.0.0/8 md5"));
        assert!(!decides("host \"all\" repuser 10.0.0.0/8 md5"));
    }

    #[test]
    fn another_method_rewrites_the_block_in_place() {
        let p = peer("10.0.0.2");
        let with_block = ensure_ok(SAMPLE, &p, HbaMethod::ScramSha256).text;
        let mut text = with_block.clone();
        text.extend_from_slice(b"# operator line after the block\n");
        let md5 = ensure_ok(&text, &p, HbaMethod::Md5);
        assert!(md5.changed);
        assert!(
            md5.text.ends_with(b"# operator line after the block\n"),
            "block stays in place"
        );
        let blocks = managed_blocks(&md5.text).unwrap();
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].is_current("repuser", HbaMethod::Md5));
        assert!(!blocks[0].is_current("repuser", HbaMethod::ScramSha256));
        let back = ensure_ok(&md5.text, &p, HbaMethod::ScramSha256).text;
        assert_eq!(back, text, "switching back gives the first block again");
    }

    #[test]
    fn another_replication_user_rewrites_the_block() {
        let p = peer("10.0.0.2");
        let first = ensure_ok(b"", &p, HbaMethod::ScramSha256).text;
        let second = ensure(&first, &p, "standby_sync", HbaMethod::ScramSha256).unwrap();
        assert!(second.changed);
        let blocks = managed_blocks(&second.text).unwrap();
        assert!(blocks[0].is_current("standby_sync", HbaMethod::ScramSha256));
    }

    #[test]
    fn a_hand_edited_block_is_restored() {
        let p = peer("10.0.0.2");
        let good = ensure_ok(b"", &p, HbaMethod::ScramSha256).text;
        let tampered = String::from_utf8(good.clone())
            .unwrap()
            .replace("scram-sha-256", "trust");
        let repaired = ensure_ok(tampered.as_bytes(), &p, HbaMethod::ScramSha256);
        assert!(repaired.changed);
        assert_eq!(repaired.text, good);
    }

    #[test]
    fn blocks_follow_the_files_line_endings() {
        let text = ensure_ok(CRLF, &peer("10.0.0.2"), HbaMethod::ScramSha256).text;
        let added = &text[CRLF.len()..];
        let lf_only = added
            .windows(2)
            .filter(|w| w[1] == b'\n' && w[0] != b'\r')
            .count();
        assert_eq!(lf_only, 0, "no bare LF in a block added to a CRLF file");
        assert_eq!(added.windows(2).filter(|w| w == b"\r\n").count(), 5);

        let mostly_lf = b"a\r\nb\nc\n";
        let text = ensure_ok(mostly_lf, &peer("10.0.0.2"), HbaMethod::ScramSha256).text;
        assert!(
            !text[mostly_lf.len()..].contains(&b'\r'),
            "LF wins when it dominates"
        );
    }

    #[test]
    fn a_file_without_final_newline_keeps_that_shape() {
        let text = ensure_ok(
            b"local all all peer",
            &peer("10.0.0.2"),
            HbaMethod::ScramSha256,
        )
        .text;
        assert!(text.starts_with(b"local all all peer\n# BEGIN keyferry peer 10.0.0.2\n"));
        assert!(
            text.ends_with(b"# END keyferry peer 10.0.0.2"),
            "no newline added at the end"
        );
    }

    #[test]
    fn removing_an_absent_peer_changes_nothing() {
        let edit = remove(SAMPLE, &peer("10.0.0.9")).unwrap();
        assert!(!edit.changed);
        assert_eq!(edit.text, SAMPLE);
    }

    #[test]
    fn markers_match_by_address_not_spelling() {
        let text = b"# BEGIN keyferry peer 2001:0db8:0:0::2\nhost all all 2001:db8::2/128 md5\n#END   keyferry peer 2001:db8::2  \n";
        let blocks = managed_blocks(text).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!((blocks[0].begin_line, blocks[0].end_line), (1, 3));
        let removed = remove(text, &peer("2001:db8::2")).unwrap();
        assert_eq!(removed.text, b"");
    }

    fn marker_problem(text: &str) -> (usize, MarkerProblem) {
        let p = peer("10.0.0.2");
        let from_ensure = ensure(text.as_bytes(), &p, "repuser", HbaMethod::ScramSha256);
        let from_remove = remove(text.as_bytes(), &p);
        let from_list = managed_blocks(text.as_bytes());
        match (from_ensure, from_remove, from_list) {
            (
                Err(Error::HbaMarkers { line, problem }),
                Err(Error::HbaMarkers { .. }),
                Err(Error::HbaMarkers { .. }),
            ) => (line, problem),
            other => panic!("broken markers must be refused by every entry point: {other:?}"),
        }
    }

    #[test]
    fn broken_markers_are_refused_not_guessed() {
        let begin = |ip: &str| format!("# BEGIN keyferry peer {ip}\n");
        let end = |ip: &str| format!("# END keyferry peer {ip}\n");
        let rule = "host all all 10.0.0.2/32 md5\n";
        let ip = "10.0.0.2";
        let other = "10.0.0.3";
        let cases: Vec<(String, usize, MarkerProblem)> = vec![
            (
                format!("local all all peer\n{}{rule}", begin(ip)),
                2,
                MarkerProblem::BeginWithoutEnd { peer: ip.into() },
            ),
            (
                format!("{rule}{}", end(ip)),
                2,
                MarkerProblem::EndWithoutBegin { peer: ip.into() },
            ),
            (
                format!("{}{}{}{}", begin(ip), begin(other), end(other), end(ip)),
                2,
                MarkerProblem::Nested { open: ip.into() },
            ),
            (
                format!("{}{}{}{}", begin(ip), end(ip), begin(ip), end(ip)),
                3,
                MarkerProblem::Duplicate {
                    peer: ip.into(),
                    first_line: 1,
                },
            ),
            (
                format!("{}{}", begin(ip), end(other)),
                2,
                MarkerProblem::MismatchedEnd {
                    open: ip.into(),
                    end: other.into(),
                },
            ),
            (
                "# BEGIN keyferry peer\n".into(),
                1,
                MarkerProblem::Unreadable,
            ),
            (
                "# BEGIN keyferry peer db-host\n".into(),
                1,
                MarkerProblem::Unreadable,
            ),
            (
                "# END keyferry 10.0.0.2\n".into(),
                1,
                MarkerProblem::Unreadable,
            ),
            (
                "# BEGIN keyferry peer 10.0.0.2 extra\n".into(),
                1,
                MarkerProblem::Unreadable,
            ),
        ];
        for (text, line, problem) in cases {
            assert_eq!(marker_problem(&text), (line, problem), "file:\n{text}");
        }
    }

    #[test]
    fn a_marker_with_stray_bytes_is_unreadable_not_ignored() {
        let text = b"local all all peer\n# BEGIN keyferry peer 10.0.0.\xff\n";
        assert!(matches!(
            managed_blocks(text),
            Err(Error::HbaMarkers {
                line: 2,
                problem: MarkerProblem::Unreadable
            })
        ));
    }

    #[test]
    fn marker_errors_are_one_line_and_say_what_to_do() {
        let message = ensure(
            b"# BEGIN keyferry peer 10.0.0.2\n",
            &peer("10.0.0.2"),
            "repuser",
            HbaMethod::Md5,
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("line 1") && message.contains("by hand"),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }

    #[test]
    fn comments_that_merely_mention_keyferry_are_not_markers() {
        let text = b"# keyferry manages the peer lines below\n# BEGIN of local rules\n# begin keyferry peer 10.0.0.2\n";
        assert!(managed_blocks(text).unwrap().is_empty());
        let edit = ensure_ok(text, &peer("10.0.0.2"), HbaMethod::Md5);
        assert_eq!(remove(&edit.text, &peer("10.0.0.2")).unwrap().text, text);
    }

    #[test]
    fn replication_user_names_that_could_mislead_are_refused() {
        for bad in [
            "",
            "all",
            "replication",
            "sameuser",
            "RepUser",
            "rep user",
            "rep,user",
            "+admins",
            "@users",
            "\"q\"",
            "9lives",
            &"r".repeat(64),
        ] {
            assert!(
                matches!(validate_role_name(bad), Err(Error::RoleName { .. })),
                "{bad:?} should be refused"
            );
            assert!(
                ensure(b"", &peer("10.0.0.2"), bad, HbaMethod::Md5).is_err(),
                "{bad:?}"
            );
        }
        for good in ["repuser", "_rep", "rep_2", &"r".repeat(63)] {
            validate_role_name(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
    }

    #[test]
    fn methods_parse_and_print_as_in_pg_hba() {
        use clap::ValueEnum;
        for method in HbaMethod::value_variants() {
            let name = method.to_possible_value().unwrap();
            assert_eq!(name.get_name(), method.as_str());
            assert_eq!(HbaMethod::from_str(method.as_str(), false), Ok(*method));
        }
        assert_eq!(HbaMethod::default().to_string(), "scram-sha-256");
        assert!(HbaMethod::from_str("trust", false).is_err());
        assert!(HbaMethod::from_str("MD5", false).is_err());
    }

    fn words(record: &HbaRecord) -> Vec<&str> {
        record.plain_words()
    }

    #[test]
    fn tokenizer_follows_postgres_rules() {
        let text = b"# comment\n\
            host all all 10.0.0.0/8 md5 # trailing comment\n\
            \n\
            host \"my db\",other \"all\" 10.0.0.2/32 md5\n\
            host all all\\\n  10.0.0.3/32 trust\n\
            host \"a\"\"b\" x 10.0.0.4/32 md5\r\n\
            local all all peer#comment\n\
            host\tdb1, db2\tall\t10.0.0.5 255.255.255.255 reject\n\
            host \"unterminated 10.0.0.6/32\n";
        let records = tokenize(text);
        let lines: Vec<usize> = records.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 4, 5, 7, 8, 9, 10]);
        assert_eq!(
            words(&records[0]),
            ["host", "all", "all", "10.0.0.0/8", "md5"]
        );
        assert_eq!(
            records[1].fields[1].len(),
            2,
            "comma makes a list inside one field"
        );
        assert_eq!(records[1].fields[1][0].text, "my db");
        assert!(records[1].fields[2][0].quoted, "quoted all is a name");
        assert_eq!(
            words(&records[2]),
            ["host", "all", "all", "10.0.0.3/32", "trust"],
            "continuation"
        );
        assert_eq!(
            records[3].fields[1][0].text, "a\"b",
            "doubled quote inside quotes"
        );
        assert_eq!(records[3].method(), Some("md5"));
        assert_eq!(
            words(&records[4]),
            ["local", "all", "all", "peer"],
            "# ends the token"
        );
        assert_eq!(
            records[5].fields[1].len(),
            2,
            "a blank after a comma keeps the list"
        );
        assert_eq!(records[5].address(), Some("10.0.0.5"));
        assert_eq!(
            records[5].method(),
            Some("reject"),
            "method after a separate netmask"
        );
        assert_eq!(records[6].fields[1][0].text, "unterminated 10.0.0.6/32");
    }

    #[test]
    fn tokenizer_reads_the_sample_file() {
        let records = tokenize(SAMPLE);
        let hosts: Vec<_> = records
            .iter()
            .filter(|r| r.kind() == Some("host"))
            .collect();
        assert_eq!(hosts.len(), 4, "{records:#?}");
        assert!(hosts.iter().all(|r| r.method() == Some("@authmethodhost@")));
    }

    #[test]
    fn finds_existing_lines_that_cover_the_peer() {
        let p = peer("10.0.0.2");
        let base = b"host all all 10.0.0.2/32 md5\n\
            host all all 10.0.0.0/24 reject\n\
            host all all 10.0.0.2 255.255.255.255 md5\n\
            host all all 10.0.0.0 255.255.0.0 md5\n\
            host all all 10.0.1.0/24 md5\n\
            host all all 0.0.0.0/0 md5\n\
            host all all ::/0 md5\n\
            host all all all md5\n\
            host all all pam-b.example.com md5\n\
            local all all peer\n";
        let text = ensure_ok(base, &p, HbaMethod::ScramSha256).text;
        let found: Vec<(usize, Coverage)> = rules_mentioning(&text, &p)
            .unwrap()
            .iter()
            .map(|m| (m.record.line, m.coverage))
            .collect();
        assert_eq!(
            found,
            [
                (1, Coverage::Exact),
                (2, Coverage::Network),
                (3, Coverage::Exact),
                (4, Coverage::Network),
                (6, Coverage::Network),
            ],
            "keyferry's own lines are not reported"
        );
        let v6 = peer("2001:db8::2");
        let v6_text = b"host all all 2001:db8::/32 md5\nhost all all 2001:db8::2/128 md5\nhost all all 10.0.0.2/32 md5\n";
        let found: Vec<Coverage> = rules_mentioning(v6_text, &v6)
            .unwrap()
            .iter()
            .map(|m| m.coverage)
            .collect();
        assert_eq!(found, [Coverage::Network, Coverage::Exact]);
    }
    fn equivalents(text: &[u8], method: HbaMethod) -> Option<Equivalents> {
        equivalent_lines(text, &peer("10.0.0.2"), "repuser", method).unwrap()
    }

    #[test]
    fn hand_written_lines_equivalent_to_keyferrys_are_found() {
        let found = |text: &str| equivalents(text.as_bytes(), HbaMethod::ScramSha256);
        let both = "local all all peer\n\
            host replication repuser 10.0.0.2/32 scram-sha-256\n\
            # the app\n\
            host all all 10.0.0.2/32 scram-sha-256\n";
        assert_eq!(
            found(both),
            Some(Equivalents {
                replication: 2,
                all: 4
            })
        );
        // Other spellings of the same thing: hostssl, a netmask, `all` as
        // the replication user, a quoted role, CRLF, the other order.
        let spelled = "hostssl all all 10.0.0.2 255.255.255.255 scram-sha-256\r\n\
            host\treplication\t\"repuser\"\t10.0.0.2/32\tscram-sha-256  # hand-made\r\n\
            host replication all 10.0.0.2/32 scram-sha-256\r\n";
        assert_eq!(
            found(spelled),
            Some(Equivalents {
                replication: 2,
                all: 1
            })
        );
        let v6 = b"host replication all 2001:db8::2/128 md5\nhost all all 2001:db8::2 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff md5\n";
        assert_eq!(
            equivalent_lines(v6, &peer("2001:db8::2"), "repuser", HbaMethod::Md5).unwrap(),
            Some(Equivalents {
                replication: 1,
                all: 2
            })
        );
    }

    #[test]
    fn lines_that_allow_something_else_are_not_equivalent() {
        let all_line = "host all all 10.0.0.2/32 scram-sha-256\n";
        for replication_line in [
            "host replication repuser 10.0.0.2/32 md5\n",
            "host replication other 10.0.0.2/32 scram-sha-256\n",
            "host replication repuser 10.0.0.0/24 scram-sha-256\n",
            "host replication repuser 10.0.0.2 255.255.255.0 scram-sha-256\n",
            "host replication repuser 10.0.0.3/32 scram-sha-256\n",
            "host all repuser 10.0.0.2/32 scram-sha-256\n",
            "host \"replication\" repuser 10.0.0.2/32 scram-sha-256\n",
            "host replication \"all\" 10.0.0.2/32 scram-sha-256\n",
            "host replication repuser,other 10.0.0.2/32 scram-sha-256\n",
            "hostnossl replication repuser 10.0.0.2/32 scram-sha-256\n",
            "host replication repuser 10.0.0.2/32 scram-sha-256 clientcert=verify-full\n",
            "host replication repuser \\\n 10.0.0.2/32 scram-sha-256\n",
            "# host replication repuser 10.0.0.2/32 scram-sha-256\n",
        ] {
            let text = format!("{replication_line}{all_line}");
            assert_eq!(
                equivalents(text.as_bytes(), HbaMethod::ScramSha256),
                None,
                "{replication_line:?}"
            );
        }
        assert_eq!(
            equivalents(all_line.as_bytes(), HbaMethod::ScramSha256),
            None,
            "one of the two is not enough"
        );
        // keyferry's own block is not a hand-written line, and a file that
        // has the block needs no look at equivalents.
        let with_block = ensure_ok(b"", &peer("10.0.0.2"), HbaMethod::ScramSha256).text;
        assert_eq!(equivalents(&with_block, HbaMethod::ScramSha256), None);
        let mut both = with_block.clone();
        both.extend_from_slice(b"host replication repuser 10.0.0.2/32 scram-sha-256\n");
        both.extend_from_slice(all_line.as_bytes());
        assert_eq!(equivalents(&both, HbaMethod::ScramSha256), None);
    }

    #[test]
    fn adopt_moves_the_equivalent_lines_into_the_block_and_keeps_every_other_byte() {
        let p = peer("10.0.0.2");
        let text = b"# top\nhost all all 10.0.0.0/8 reject\nhost replication all 10.0.0.2/32 md5\n\nhost all all 10.0.0.2 255.255.255.255 md5 # app\nlocal all all peer\n";
        let (edit, found) = adopt(text, &p, "repuser", HbaMethod::Md5).unwrap();
        assert_eq!(
            found,
            Some(Equivalents {
                replication: 3,
                all: 5
            })
        );
        let block = String::from_utf8(block_text(&p, "repuser", HbaMethod::Md5, b"\n")).unwrap();
        let expected =
            format!("# top\nhost all all 10.0.0.0/8 reject\n{block}\n\nlocal all all peer\n");
        assert_eq!(String::from_utf8(edit.text.clone()).unwrap(), expected);
        assert!(edit.changed);
        assert!(
            !ensure_ok(&edit.text, &p, HbaMethod::Md5).changed,
            "the block is ensure's"
        );
        let again = adopt(&edit.text, &p, "repuser", HbaMethod::Md5).unwrap();
        assert_eq!((again.0.changed, again.1), (false, None));

        // CRLF, the second line last and unterminated: the file keeps both shapes.
        let crlf = b"host all all 10.0.0.2/32 md5\r\nlocal all all peer\r\nhost replication repuser 10.0.0.2/32 md5";
        let (edit, _) = adopt(crlf, &p, "repuser", HbaMethod::Md5).unwrap();
        let block = String::from_utf8(block_text(&p, "repuser", HbaMethod::Md5, b"\r\n")).unwrap();
        assert_eq!(
            String::from_utf8(edit.text).unwrap(),
            format!("{block}\r\nlocal all all peer")
        );

        // Nothing equivalent: adopt is ensure.
        let (edit, found) = adopt(SAMPLE, &p, "repuser", HbaMethod::Md5).unwrap();
        assert_eq!(found, None);
        assert_eq!(edit, ensure_ok(SAMPLE, &p, HbaMethod::Md5));
    }

    /// Issue 23, finding 7: a password file passed as `--file` was edited.
    #[test]
    fn only_what_reads_as_pg_hba_conf_is_taken_for_one() {
        let hba = b"# TYPE DATABASE USER ADDRESS METHOD\n\n\
local all postgres peer\n\
host all all 127.0.0.1/32 scram-sha-256\n\
host replication repuser 10.0.0.2 255.255.255.255 md5\n\
hostssl \"db one\",two all ::1/128 cert # comment\n";
        assert_eq!(not_hba_reason(hba), None);
        assert_eq!(not_hba_reason(b""), None);
        for (text, line) in [
            (&b"root:$6$salt$hash:19000:0:99999:7:::\n"[..], 1),
            (b"10.0.0.1:5432:*:repuser:s3cret\n", 1),
            (b"local all all peer\nhost all all\n", 2),
            (b"# x\nlisten_addresses = '*'\n", 2),
        ] {
            let why = not_hba_reason(text).unwrap();
            assert!(why.contains(&format!("line {line}")), "{why}");
            assert!(!why.contains("s3cret") && !why.contains("hash"), "{why}");
        }
        assert!(not_hba_reason(b"local all all peer\n\0").is_some());
    }
}
