//! Bundle passwords: generation, the canonical form, and where a password
//! may come from.
//!
//! Invariants:
//! - a [`Password`] zeroizes its bytes when dropped and cannot be printed:
//!   it has no `Display`, and its `Debug` shows only a placeholder;
//! - a password never comes from a command-line argument: only from a
//!   terminal prompt, a file, an inherited file descriptor or a named
//!   environment variable;
//! - the bytes handed to the KDF are always the canonical form, on export
//!   and on import alike.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// The alphabet of generated passwords: Crockford-style base32 without the
/// letters that are misread (i, l, o, u), 5 bits a character.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// 24 characters of 5 bits: 120 bits of entropy.
pub const GENERATED_LEN: usize = 24;
const GROUP_LEN: usize = 4;
/// The longest password keyferry reads from a file, descriptor or variable;
/// anything longer is almost certainly the wrong file.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Operators who bring their own password must bring at least this many
/// characters.
pub const MIN_CHOSEN_LEN: usize = 12;

/// A bundle password in canonical form.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Canonicalises what an operator typed or supplied.
    pub fn from_typed(typed: &str) -> Self {
        Self(Zeroizing::new(canonicalize(typed)))
    }

    /// A fresh 120-bit password from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, SecretError> {
        let mut raw = Zeroizing::new([0u8; GENERATED_LEN]);
        getrandom::fill(raw.as_mut()).map_err(|e| SecretError::Random(e.to_string()))?;
        // 256 is a multiple of 32, so masking is unbiased.
        let mut chars = Zeroizing::new([0u8; GENERATED_LEN]);
        for (c, r) in chars.iter_mut().zip(raw.iter()) {
            *c = ALPHABET[usize::from(r & 0x1f)];
        }
        Ok(Self(Zeroizing::new(group(&chars[..]))))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The password itself, for the one place allowed to show it: the
    /// operator's terminal right after export.
    pub(crate) fn reveal(&self) -> &str {
        &self.0
    }

    pub(crate) fn char_len(&self) -> usize {
        self.0.chars().count()
    }

    /// Whether this is a generated-style password (24 alphabet characters).
    #[cfg(test)]
    fn is_generated_form(&self) -> bool {
        generated_chars(&self.0).is_some()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Trims surrounding whitespace; a generated-style password typed in any
/// case, with or without spaces and dashes, becomes lowercase groups of four
/// joined by `-`. Anything else is kept as typed.
pub(crate) fn canonicalize(typed: &str) -> String {
    let trimmed = typed.trim();
    match generated_chars(trimmed) {
        Some(chars) => group(&chars),
        None => trimmed.to_owned(),
    }
}

/// The 24 lowercase alphabet characters of a generated-style password, or
/// `None` when `s` is not one.
fn generated_chars(s: &str) -> Option<Zeroizing<Vec<u8>>> {
    let mut chars = Zeroizing::new(Vec::with_capacity(GENERATED_LEN));
    for c in s.chars().filter(|c| *c != ' ' && *c != '-') {
        let lower = c.to_ascii_lowercase();
        if !lower.is_ascii() || !ALPHABET.contains(&(lower as u8)) || chars.len() == GENERATED_LEN {
            return None;
        }
        chars.push(lower as u8);
    }
    (chars.len() == GENERATED_LEN).then_some(chars)
}

fn group(chars: &[u8]) -> String {
    let mut out = String::with_capacity(chars.len() + chars.len() / GROUP_LEN);
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && i % GROUP_LEN == 0 {
            out.push('-');
        }
        out.push(char::from(*c));
    }
    out
}

/// Where a password comes from. There is deliberately no variant for a
/// command-line value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// Ask on the terminal without echo.
    Prompt,
    /// The first line of a file.
    File(PathBuf),
    /// The first line read from an inherited file descriptor (Unix), which
    /// is borrowed, never closed.
    Fd(i32),
    /// The value of the named environment variable.
    Env(String),
}

#[derive(Debug, Error)]
pub enum SecretError {
    #[cfg_attr(
        not(windows),
        error(
            "no password source and no terminal to ask on: pass --password-file PATH, \
             --password-fd N or --password-env NAME"
        )
    )]
    #[cfg_attr(
        windows,
        error(
            "no password source and no console to ask on: pass --password-file PATH \
             or --password-env NAME (from Git Bash or another mintty terminal, which is \
             not a console, run keyferry through winpty)"
        )
    )]
    NoTerminal,
    #[error("cannot read the password from {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The source the operator named cannot be read (a usage error).
    #[error("{what}: cannot read the password ({source}): check the option's value")]
    Source {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the password from {0} is empty: check the source")]
    Empty(String),
    #[error(
        "the password from {0} is longer than {MAX_PASSWORD_LEN} bytes: is it the right source?"
    )]
    TooLong(String),
    #[error("the password from {0} is not valid UTF-8: check the source")]
    NotUtf8(String),
    #[error("--password-env {0}: the environment variable is not set: export it or choose another source")]
    EnvMissing(String),
    #[error("--password-env {0:?} is not a variable name (empty, or with '=' or a NUL): give the variable's name")]
    EnvName(String),
    #[error("--password-fd {0}: descriptor {0} is not open in keyferry's process: open it for keyferry (e.g. `{0}<FILE` in the shell) or choose another source")]
    FdNotOpen(i32),
    #[error(
        "--password-fd is not available on this platform: use --password-file or --password-env"
    )]
    FdUnsupported,
    #[error("the two passwords typed do not match: try again")]
    Mismatch,
    #[error(
        "a chosen password must have at least {MIN_CHOSEN_LEN} characters: \
         use a longer one, or let keyferry generate one"
    )]
    TooShort,
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

impl PasswordSource {
    /// Reads the password; `prompt` is shown when asking on the terminal.
    pub fn read(&self, prompt: &str) -> Result<Password, SecretError> {
        let (what, raw) = match self {
            PasswordSource::Prompt => ("the terminal".to_owned(), read_prompt(prompt)?),
            PasswordSource::File(path) => (
                format!("--password-file {}", path.display()),
                read_file(path).map_err(|source| SecretError::Source {
                    what: format!("--password-file {}", path.display()),
                    source,
                })?,
            ),
            PasswordSource::Fd(fd) => (
                format!("--password-fd {fd}"),
                platform::read_fd(*fd).map_err(|source| match source.kind() {
                    io::ErrorKind::Unsupported => SecretError::FdUnsupported,
                    _ => SecretError::Source {
                        what: format!("--password-fd {fd}"),
                        source,
                    },
                })?,
            ),
            PasswordSource::Env(name) => (format!("--password-env {name}"), take_env(name)?),
        };
        password_from_bytes(&what, raw)
    }

    /// Asks twice on the terminal for a password the operator chooses;
    /// other sources are read once.
    pub(crate) fn read_new(&self, prompt: &str) -> Result<Password, SecretError> {
        let password = self.read(prompt)?;
        if *self == PasswordSource::Prompt {
            let again = self.read("Repeat the password: ")?;
            if password.as_bytes() != again.as_bytes() {
                return Err(SecretError::Mismatch);
            }
        }
        if password.char_len() < MIN_CHOSEN_LEN {
            return Err(SecretError::TooShort);
        }
        Ok(password)
    }
}

/// A database password (not a bundle password: it is used exactly as
/// given, never canonicalised) from a source the operator named: the first
/// line, without its line end. The prompt is not a source here (a
/// database password comes from libpq's password file otherwise).
pub(crate) fn read_db_password(source: &PasswordSource) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let (what, mut raw) = match source {
        PasswordSource::Prompt => return Err(SecretError::NoTerminal),
        PasswordSource::File(path) => {
            let what = format!("--password-file {}", path.display());
            let raw = read_file(path).map_err(|source| SecretError::Source {
                what: what.clone(),
                source,
            })?;
            (what, raw)
        }
        PasswordSource::Fd(fd) => {
            let what = format!("--password-fd {fd}");
            let raw = platform::read_fd(*fd).map_err(|source| match source.kind() {
                io::ErrorKind::Unsupported => SecretError::FdUnsupported,
                _ => SecretError::Source {
                    what: what.clone(),
                    source,
                },
            })?;
            (what, raw)
        }
        PasswordSource::Env(name) => (format!("--password-env {name}"), take_env(name)?),
    };
    if raw.len() > MAX_PASSWORD_LEN {
        return Err(SecretError::TooLong(what));
    }
    if let Some(end) = raw.iter().position(|b| *b == b'\n') {
        raw[end..].zeroize();
        raw.truncate(end);
    }
    if raw.last() == Some(&b'\r') {
        raw.pop();
    }
    if raw.is_empty() {
        return Err(SecretError::Empty(what));
    }
    Ok(raw)
}

/// Values of `--password-env` variables, taken out of the environment.
static TAKEN_FROM_ENV: Mutex<BTreeMap<String, Zeroizing<Vec<u8>>>> = Mutex::new(BTreeMap::new());

/// The value of the environment variable `name`, which is removed from
/// keyferry's environment on first read (and kept here for later reads):
/// every program keyferry starts (`pg_ctl`, the postmaster, `pg_basebackup`)
/// inherits the environment, and must not inherit the password.
fn take_env(name: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(SecretError::EnvName(name.to_owned()));
    }
    let mut taken = TAKEN_FROM_ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(value) = taken.get(name) {
        return Ok(value.clone());
    }
    let value = std::env::var_os(name).ok_or_else(|| SecretError::EnvMissing(name.to_owned()))?;
    std::env::remove_var(name);
    let value = Zeroizing::new(value.into_encoded_bytes());
    taken.insert(name.to_owned(), value.clone());
    Ok(value)
}

/// Makes the named password sources safe before keyferry does anything
/// else (the binary calls it first, while it has one thread and has opened
/// no file): a `--password-fd` descriptor must be open now, or the number
/// could later be the one keyferry's own file (the bundle) gets, and that
/// file would be read as the password; above 2 it is marked close-on-exec,
/// so no program keyferry starts inherits it (0 to 2 are never passed on
/// as they are: children get /dev/null or pipes). A `--password-env`
/// variable is taken out of the environment at once.
pub(crate) fn prepare_sources(sources: &[PasswordSource]) -> Result<(), SecretError> {
    for source in sources {
        match source {
            PasswordSource::Fd(fd) => platform::prepare_fd(*fd)?,
            PasswordSource::Env(name) => {
                // Missing now is reported when it is read, with its own error.
                match take_env(name) {
                    Ok(_) | Err(SecretError::EnvMissing(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            PasswordSource::Prompt | PasswordSource::File(_) => {}
        }
    }
    Ok(())
}

/// Takes the first line of what a source gave (a trailing newline from
/// `echo` or an editor is not part of the password).
fn password_from_bytes(what: &str, mut raw: Zeroizing<Vec<u8>>) -> Result<Password, SecretError> {
    if raw.len() > MAX_PASSWORD_LEN {
        return Err(SecretError::TooLong(what.to_owned()));
    }
    if let Some(end) = raw.iter().position(|b| *b == b'\n') {
        raw[end..].zeroize();
        raw.truncate(end);
    }
    let text = std::str::from_utf8(&raw).map_err(|_| SecretError::NotUtf8(what.to_owned()))?;
    let password = Password::from_typed(text);
    if password.as_bytes().is_empty() {
        return Err(SecretError::Empty(what.to_owned()));
    }
    Ok(password)
}

fn read_limited(mut reader: impl Read) -> io::Result<Zeroizing<Vec<u8>>> {
    // Pre-sized and never grown past the limit, so no reallocation leaves a
    // stray copy of the secret behind.
    let mut buf = Zeroizing::new(vec![0u8; MAX_PASSWORD_LEN + 1]);
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if buf[..filled].contains(&b'\n') {
            break;
        }
    }
    buf[filled..].zeroize();
    buf.truncate(filled);
    Ok(buf)
}

fn read_file(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    read_limited(std::fs::File::open(path)?)
}

fn read_prompt(prompt: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    if !have_terminal() {
        return Err(SecretError::NoTerminal);
    }
    let typed = rpassword::prompt_password(prompt).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::Unsupported => SecretError::NoTerminal,
        _ => SecretError::Read {
            what: "the terminal".to_owned(),
            source,
        },
    })?;
    Ok(Zeroizing::new(Zeroizing::new(typed).as_bytes().to_vec()))
}

/// Whether a terminal is there to prompt on.
pub(crate) fn have_terminal() -> bool {
    platform::have_terminal()
}

/// Unix: the prompt goes through `/dev/tty` (rpassword), which exists when
/// standard input or standard error is a terminal; `--password-fd` reads an
/// inherited descriptor through a duplicate and leaves it open.
#[cfg(unix)]
mod platform {
    use std::fs::File;
    use std::io::{self, IsTerminal};
    use std::os::fd::BorrowedFd;

    use zeroize::Zeroizing;

    pub(crate) fn have_terminal() -> bool {
        std::io::stdin().is_terminal() || std::io::stderr().is_terminal()
    }

    /// See [`super::prepare_sources`].
    pub(crate) fn prepare_fd(fd: i32) -> Result<(), super::SecretError> {
        // SAFETY: F_GETFD takes no pointer; it fails with EBADF on a
        // descriptor that is not open (and on a negative number).
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags == -1 {
            return Err(super::SecretError::FdNotOpen(fd));
        }
        if fd > 2 && flags & libc::FD_CLOEXEC == 0 {
            // SAFETY: F_SETFD takes an int; `fd` is open (just checked).
            // The flag belongs to this process's descriptor only, not to
            // the caller's.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } == -1 {
                return Err(super::SecretError::Source {
                    what: format!("--password-fd {fd}"),
                    source: io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// Reads the password from the caller's descriptor `fd` through a
    /// duplicate: `fd` itself stays open. Closing it (even 0, 1 or 2) would
    /// let the next file keyferry opens take its number, and later
    /// messages meant for that descriptor would land in the file.
    pub(crate) fn read_fd(fd: i32) -> io::Result<Zeroizing<Vec<u8>>> {
        if fd < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "negative descriptor",
            ));
        }
        // SAFETY: F_GETFD takes no pointer; it fails with EBADF on a
        // descriptor that is not open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "descriptor is not open",
            ));
        }
        // SAFETY: `fd` is open (checked just above, and nothing in keyferry
        // closes a descriptor it does not own) and the borrow ends with this
        // statement; only the duplicate is owned, and closed after reading.
        let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        super::read_limited(File::from(dup))
    }
}

/// Windows: rpassword prompts on the process's console (`CONOUT$`) and
/// reads it without echo (`CONIN$`, `ReadConsoleW`), so a prompt needs a
/// real console. `std`'s `is_terminal` also says yes for an MSYS/mintty
/// pseudo-terminal (Git Bash), where `CONIN$` is a hidden console nobody
/// types into and the prompt would wait forever; so this asks the console
/// itself: standard input or standard error must be a console handle
/// (`GetConsoleMode` succeeds). A service, a scheduled task or a redirected
/// run without a console gets the NoTerminal error at once.
/// `--password-fd` has no Windows meaning and reports `Unsupported`.
#[cfg(windows)]
mod platform {
    use std::io;

    use windows_sys::Win32::System::Console::{
        GetConsoleMode, GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE,
    };
    use zeroize::Zeroizing;

    pub(crate) fn have_terminal() -> bool {
        [STD_INPUT_HANDLE, STD_ERROR_HANDLE]
            .into_iter()
            .any(|which| {
                let mut mode = 0u32;
                // SAFETY: GetStdHandle takes no pointers; GetConsoleMode gets a
                // valid out pointer and fails cleanly on a null, invalid or
                // non-console handle.
                unsafe { GetConsoleMode(GetStdHandle(which), &mut mode) != 0 }
            })
    }

    pub(crate) fn read_fd(_fd: i32) -> io::Result<Zeroizing<Vec<u8>>> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub(crate) fn prepare_fd(_fd: i32) -> Result<(), super::SecretError> {
        Err(super::SecretError::FdUnsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_password_descriptor_is_read_and_left_open() {
        use std::io::Write;
        use std::os::fd::AsRawFd;

        let (reader, mut writer) = std::io::pipe().unwrap();
        writer
            .write_all(b"from a pipe password\nnext line\n")
            .unwrap();
        drop(writer);
        let fd = reader.as_raw_fd();
        let password = PasswordSource::Fd(fd).read("").unwrap();
        assert_eq!(password.reveal(), "from a pipe password");
        // SAFETY: F_GETFD takes no pointer.
        assert_ne!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) },
            -1,
            "the caller's descriptor is still open"
        );
        drop(reader);
        assert!(matches!(
            PasswordSource::Fd(-1).read(""),
            Err(SecretError::Source { .. })
        ));
    }

    /// Issue 23, finding 4: the variable stayed in the environment and
    /// every program keyferry started inherited it.
    #[cfg(unix)]
    #[test]
    fn a_password_variable_leaves_the_environment_once_read_and_no_child_sees_it() {
        let name = "KEYFERRY_TEST_PW_TAKEN";
        std::env::set_var(name, "env password value");
        let p = PasswordSource::Env(name.into()).read("").unwrap();
        assert_eq!(p.reveal(), "env password value");
        assert!(std::env::var_os(name).is_none());
        // A second read (a retry, a second connection) still has it.
        let again = read_db_password(&PasswordSource::Env(name.into())).unwrap();
        assert_eq!(&again[..], b"env password value");
        let child = std::process::Command::new("/usr/bin/env").output().unwrap();
        let seen = String::from_utf8_lossy(&child.stdout);
        assert!(!seen.contains(name) && !seen.contains("env password value"));
        assert!(matches!(
            PasswordSource::Env("A=B".into()).read(""),
            Err(SecretError::EnvName(_))
        ));
    }

    /// Issue 23, finding 5: a descriptor that is not open is named at
    /// start; an open one above 2 is kept from children.
    #[cfg(unix)]
    #[test]
    fn a_password_descriptor_must_be_open_at_start_and_is_not_inherited() {
        use std::os::fd::AsRawFd;
        let (reader, writer) = std::io::pipe().unwrap();
        let fd = reader.as_raw_fd();
        drop(writer);
        // std opens its descriptors close-on-exec; the caller's are not.
        // SAFETY: F_SETFD takes an int; `fd` is open.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        prepare_sources(&[PasswordSource::Fd(fd)]).unwrap();
        // SAFETY: F_GETFD takes no pointer.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        drop(reader);
        // Far above any descriptor limit: never open (a number just closed
        // could be reused by another test's thread).
        let closed = 987_654;
        let err = prepare_sources(&[PasswordSource::Fd(closed)]).unwrap_err();
        assert!(matches!(err, SecretError::FdNotOpen(n) if n == closed));
        assert!(err.to_string().contains("--password-fd 987654"));
    }

    #[test]
    fn generated_passwords_are_grouped_and_canonical() {
        let p = Password::generate().unwrap();
        let s = p.reveal();
        assert_eq!(s.len(), 29);
        assert_eq!(s.split('-').count(), 6);
        assert!(s.split('-').all(|g| g.len() == 4));
        assert!(p.is_generated_form());
        assert_eq!(canonicalize(s), s);
        assert_ne!(Password::generate().unwrap().reveal(), s);
    }

    #[test]
    fn canonical_form_of_generated_style_passwords() {
        let want = "k7q2-m9xd-pwr4-h3jt-8vcn-2bfa";
        for typed in [
            "k7q2-m9xd-pwr4-h3jt-8vcn-2bfa",
            "K7Q2 M9XD PWR4 H3JT 8VCN 2BFA",
            "  k7q2m9xdpwr4h3jt8vcn2bfa\n",
            "K7Q2-M9XD PWR4-H3JT 8VCN-2BFA\t",
        ] {
            assert_eq!(canonicalize(typed), want, "{typed:?}");
        }
    }

    #[test]
    fn other_passwords_are_only_trimmed() {
        assert_eq!(canonicalize("  vector password \r\n"), "vector password");
        // 'i' is not in the alphabet: not a generated-style password.
        assert_eq!(
            canonicalize("K7Q2-M9XD-PWR4-H3JT-8VCN-2BFi"),
            "K7Q2-M9XD-PWR4-H3JT-8VCN-2BFi"
        );
        // 25 characters: not one either.
        assert_eq!(
            canonicalize("k7q2-m9xd-pwr4-h3jt-8vcn-2bfaa"),
            "k7q2-m9xd-pwr4-h3jt-8vcn-2bfaa"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let p = Password::from_typed("correct horse battery staple");
        assert!(!format!("{p:?}").contains("horse"));
    }

    #[test]
    fn file_source_takes_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "vector password\nsecond line\n").unwrap();
        let p = PasswordSource::File(path.clone()).read("").unwrap();
        assert_eq!(p.as_bytes(), b"vector password");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            PasswordSource::File(path).read(""),
            Err(SecretError::Empty(_))
        ));
    }
}
