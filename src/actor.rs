//! Who makes a change, for the audit log: this host's name and the OS
//! account of this process, taken from the process's credentials.
//!
//! Invariants:
//! - the account is never read from the environment (`USER`, `LOGNAME`,
//!   `USERNAME` are whatever the caller set): on Unix it is the effective
//!   uid resolved through the password database (`getpwuid_r`), or
//!   `uid 1234` when the uid has no entry; on Windows it is the user of the
//!   process token (`DOMAIN\name` via `LookupAccountSidW`), or the SID
//!   string (`S-1-5-…`) when it cannot be looked up;
//! - the sudo invoker is a hint, never the account: it is added only on
//!   Unix, only when the real and effective uids are both 0, from the
//!   numeric `SUDO_UID` (resolved through the password database like the
//!   account; `SUDO_USER` is ignored). Any root process can set `SUDO_UID`,
//!   so the hint is labelled as claimed. It can only ever add a name next
//!   to `root`, never replace it;
//! - the audit record's schema is unchanged: the hint goes inside the
//!   record's `user` string, as `root (sudo from alice, claimed by
//!   SUDO_UID)`, so records and their MACs keep the same fields.

use std::fmt;

/// Who made a change, from where: what an audit record's `host` and `user`
/// fields hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Actor {
    pub host: String,
    /// [`OsUser`]'s recorded form.
    pub user: String,
}

impl Actor {
    /// The host name and OS account of this process.
    pub(crate) fn current() -> Self {
        Self {
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            user: OsUser::current().to_string(),
        }
    }
}

/// The OS account this process runs as, and who claims to have run it
/// through sudo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OsUser {
    /// The account from the process's credentials.
    pub account: String,
    /// The account named by `SUDO_UID` when running as root; claimed, not
    /// proven (see the module docs).
    pub via_sudo: Option<String>,
}

impl OsUser {
    /// This process's account, from its credentials.
    pub(crate) fn current() -> Self {
        platform::current()
    }
}

/// The name of the OS account that owns `path`, when it has one: on Unix
/// from the file's uid through the password database; `None` on Windows,
/// where no caller needs it (PostgreSQL has no Unix socket there, so there
/// is no peer authentication to match).
pub(crate) fn owner_name(path: &std::path::Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        platform::lookup(std::fs::metadata(path).ok()?.uid())
    }
    #[cfg(windows)]
    {
        let _ = path;
        None
    }
}

/// The form recorded in the audit log: `alice`, or `root (sudo from alice,
/// claimed by SUDO_UID)`.
impl fmt::Display for OsUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.account)?;
        if let Some(invoker) = &self.via_sudo {
            write!(f, " (sudo from {invoker}, claimed by SUDO_UID)")?;
        }
        Ok(())
    }
}

#[cfg(unix)]
mod platform {
    use std::ffi::CStr;

    use super::OsUser;

    /// The largest buffer offered to `getpwuid_r` before giving up on a
    /// name (an entry this large is not a real account).
    const MAX_PASSWD_BUF: usize = 1 << 20;

    pub(crate) fn current() -> OsUser {
        // SAFETY: getuid and geteuid take no arguments and cannot fail.
        let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
        let via_sudo = if uid == 0 && euid == 0 {
            std::env::var("SUDO_UID")
                .ok()
                .and_then(|v| v.trim().parse::<libc::uid_t>().ok())
                .filter(|invoker| *invoker != 0)
                .map(account_name)
        } else {
            None
        };
        OsUser {
            account: account_name(euid),
            via_sudo,
        }
    }

    /// The password database's name for `uid`, else `uid N`.
    pub(crate) fn account_name(uid: libc::uid_t) -> String {
        lookup(uid).unwrap_or_else(|| format!("uid {uid}"))
    }

    pub(super) fn lookup(uid: libc::uid_t) -> Option<String> {
        // SAFETY: sysconf takes no pointers.
        let hint = unsafe { libc::sysconf(libc::_SC_GETPW_R_SIZE_MAX) };
        let mut len = usize::try_from(hint)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(1024);
        loop {
            let mut buf = vec![0 as libc::c_char; len];
            // SAFETY: an all-zero passwd is a valid value of this plain C
            // struct; getpwuid_r only writes into it.
            let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call: `pwd` and `found`
            // are locals, `buf` is `len` bytes long and outlives every use of
            // the strings getpwuid_r points into it.
            let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), len, &mut found) };
            if rc == libc::ERANGE && len < MAX_PASSWD_BUF {
                len *= 2;
                continue;
            }
            if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
                return None;
            }
            // SAFETY: on success pw_name points to a NUL-terminated string
            // inside `buf`, which is still alive.
            let name = unsafe { CStr::from_ptr(pwd.pw_name) };
            let name = name.to_string_lossy().into_owned();
            return (!name.is_empty()).then_some(name);
        }
    }
}

#[cfg(windows)]
mod platform {
    use std::ptr;

    use windows_sys::Win32::Foundation::{CloseHandle, LocalFree, HANDLE};
    use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
    use windows_sys::Win32::Security::{
        GetTokenInformation, LookupAccountSidW, TokenUser, PSID, SID_NAME_USE, TOKEN_QUERY,
        TOKEN_USER,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    use super::OsUser;

    pub(crate) fn current() -> OsUser {
        let account = token_user().unwrap_or_else(|code| {
            format!("unknown (the process token could not be read: Windows error {code})")
        });
        OsUser {
            account,
            via_sudo: None,
        }
    }

    /// `DOMAIN\name` of the process token's user, else its SID string.
    fn token_user() -> Result<String, u32> {
        let mut token: HANDLE = ptr::null_mut();
        // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` is a
        // valid out pointer.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(last_error());
        }
        let result = user_of(token);
        // SAFETY: `token` was opened above and is closed once.
        unsafe { CloseHandle(token) };
        result
    }

    fn user_of(token: HANDLE) -> Result<String, u32> {
        let mut needed = 0u32;
        // SAFETY: a size query: null buffer of length 0, valid out pointer.
        unsafe { GetTokenInformation(token, TokenUser, ptr::null_mut(), 0, &mut needed) };
        if needed == 0 {
            return Err(last_error());
        }
        // u64 elements keep the TOKEN_USER at its alignment.
        let mut buf = vec![0u64; (needed as usize).div_ceil(8)];
        // SAFETY: `buf` holds at least `needed` bytes.
        let ok = unsafe {
            GetTokenInformation(
                token,
                TokenUser,
                buf.as_mut_ptr().cast(),
                needed,
                &mut needed,
            )
        };
        if ok == 0 {
            return Err(last_error());
        }
        // SAFETY: on success the buffer starts with a TOKEN_USER whose SID
        // points into the same buffer, which outlives `sid`'s uses.
        let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
        account_name(sid)
            .or_else(|| sid_string(sid))
            .ok_or_else(last_error)
    }

    fn account_name(sid: PSID) -> Option<String> {
        let mut name = [0u16; 256];
        let mut domain = [0u16; 256];
        let (mut name_len, mut domain_len) = (name.len() as u32, domain.len() as u32);
        let mut kind: SID_NAME_USE = 0;
        // SAFETY: both buffers are as long as the lengths passed; `sid` is
        // valid (see user_of).
        let ok = unsafe {
            LookupAccountSidW(
                ptr::null(),
                sid,
                name.as_mut_ptr(),
                &mut name_len,
                domain.as_mut_ptr(),
                &mut domain_len,
                &mut kind,
            )
        };
        if ok == 0 {
            return None;
        }
        let name = String::from_utf16_lossy(&name[..name_len as usize]);
        let domain = String::from_utf16_lossy(&domain[..domain_len as usize]);
        Some(if domain.is_empty() {
            name
        } else {
            format!("{domain}\\{name}")
        })
    }

    fn sid_string(sid: PSID) -> Option<String> {
        let mut text: *mut u16 = ptr::null_mut();
        // SAFETY: `sid` is valid; `text` is a valid out pointer.
        if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 || text.is_null() {
            return None;
        }
        // SAFETY: on success `text` is a NUL-terminated wide string that
        // LocalAlloc made; it is read once, then freed once.
        let s = unsafe {
            let len = (0..).take_while(|&i| *text.add(i) != 0).count();
            let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
            LocalFree(text.cast());
            s
        };
        Some(s)
    }

    fn last_error() -> u32 {
        std::io::Error::last_os_error()
            .raw_os_error()
            .map_or(0, |c| c as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_form_labels_the_sudo_invoker_as_claimed() {
        let plain = OsUser {
            account: "alice".into(),
            via_sudo: None,
        };
        assert_eq!(plain.to_string(), "alice");
        let sudo = OsUser {
            account: "root".into(),
            via_sudo: Some("alice".into()),
        };
        assert_eq!(
            sudo.to_string(),
            "root (sudo from alice, claimed by SUDO_UID)"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_account_comes_from_the_uid_not_the_environment() {
        // uid 0 is root in every password database keyferry runs with.
        assert_eq!(platform::account_name(0), "root");
        // A uid nobody has falls back to the number.
        assert_eq!(platform::account_name(3_999_999_999), "uid 3999999999");
        let me = OsUser::current();
        assert!(!me.account.is_empty());
        assert_ne!(me.account, "unknown");
    }
}
