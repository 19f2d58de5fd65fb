//! Windows: owner-only files by security descriptor at creation time, and
//! renames that are durable when they return.
//!
//! Every directory, staged file (and so every keyring, backup and bundle,
//! which are staged files renamed into place) and append-only file that
//! fsutil creates gets, in the `CreateFileW` / `CreateDirectoryW` call that
//! creates it, this security descriptor:
//!
//! ```text
//! D:P(A;;FA;;;<current user's SID>)(A;;FA;;;SY)(A;;FA;;;BA)
//! ```
//!
//! a protected DACL (`P`: nothing is inherited from the parent) granting
//! full access to the current user, SYSTEM and the Administrators group.
//! Directories carry the same ACEs with `OICI`, so files that something else
//! creates inside them inherit owner-only access too.
//!
//! Why at creation and not `SetSecurityInfo` afterwards: a file created
//! with the parent's inherited ACL is readable by whoever the parent lets in
//! (under `C:\ProgramData`, the Users group) until the second call lands,
//! and a reader who opens it in that window keeps the handle after the
//! change. Passing `SECURITY_ATTRIBUTES` to the creating call leaves no
//! window, the same guarantee as `open(O_EXCL, 0600)` on Unix. `std`'s
//! `OpenOptions` and `DirBuilder` cannot carry security attributes, so this
//! module calls the Win32 functions itself; staged files still go through
//! `tempfile::Builder::make_in` for the random name, the retry on collision
//! and the delete-on-drop.
//!
//! Why the user's SID and not `OW` (OWNER RIGHTS): an elevated
//! administrator's files are owned by the Administrators group by default,
//! and `OW` would follow a later change of owner; naming the user is what
//! "owner-only" means to an operator reading `icacls`.
//!
//! Renames use `MoveFileExW` with `MOVEFILE_WRITE_THROUGH` (the call
//! returns once the move is on disk: Windows has no directory fsync) and
//! `MOVEFILE_REPLACE_EXISTING` only when replacing is asked for; without it
//! the move fails if the target exists, atomically. A renamed file keeps its
//! own security descriptor, so a keyring replaced this way is owner-only
//! whatever the directory says.
//!
//! Paths are passed to Win32 as given (NUL-terminated UTF-16): the classic
//! `MAX_PATH` (260 characters) limit applies to these calls unless the
//! machine enables long paths.

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::iter;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, RawHandle};
use std::path::Path;
use std::ptr;

use tempfile::NamedTempFile;
use windows_sys::Win32::Foundation::{
    CloseHandle, LocalFree, ERROR_ALREADY_EXISTS, ERROR_INSUFFICIENT_BUFFER, GENERIC_ALL,
    GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    GetNamedSecurityInfoW, SetSecurityInfo, SDDL_REVISION_1, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    EqualSid, GetAce, GetSecurityDescriptorControl, GetTokenInformation, IsWellKnownSid, TokenUser,
    WinBuiltinAdministratorsSid, WinCreatorOwnerRightsSid, WinLocalSystemSid, ACCESS_ALLOWED_ACE,
    ACE_HEADER, ACL, DACL_SECURITY_INFORMATION, INHERIT_ONLY_ACE, OWNER_SECURITY_INFORMATION,
    PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES,
    SE_DACL_PROTECTED, TOKEN_QUERY, TOKEN_USER, UNPROTECTED_DACL_SECURITY_INFORMATION,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateDirectoryW, CreateFileW, GetDiskFreeSpaceExW, MoveFileExW, CREATE_NEW,
    FILE_ATTRIBUTE_NORMAL, FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_READ_DATA,
    FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_WRITE_DATA,
    MOVEFILE_REPLACE_EXISTING, MOVEFILE_WRITE_THROUGH, OPEN_ALWAYS,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

use super::Clobber;

/// `WRITE_DAC` and `WRITE_OWNER`: whoever holds either can grant itself
/// read access, so for [`is_shared_readable`] they count as read.
const WRITE_DAC: u32 = 0x0004_0000;
const WRITE_OWNER: u32 = 0x0008_0000;
/// ACE types (winnt.h). Defined here rather than pulling in windows-sys's
/// large `Win32_System_SystemServices` feature for four numbers.
const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;
const ACCESS_DENIED_ACE_TYPE: u8 = 1;
const ACCESS_ALLOWED_CALLBACK_ACE_TYPE: u8 = 9;
const ACCESS_DENIED_CALLBACK_ACE_TYPE: u8 = 10;
/// The SID of LocalSystem, which gets its own ACE anyway.
const LOCAL_SYSTEM_SID: &str = "S-1-5-18";

/// Creates `dir` and any missing parents, each with the owner-only DACL.
pub(crate) fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir_all(parent)?;
    }
    let sd = OwnerOnly::new(Kind::Dir)?;
    let attrs = sd.attributes();
    let wide = wide(dir)?;
    // SAFETY: `wide` is NUL-terminated and outlives the call; `attrs` points
    // at a security descriptor that `sd` keeps alive until after the call.
    let ok = unsafe { CreateDirectoryW(wide.as_ptr(), &attrs) };
    if ok == 0 {
        let e = io::Error::last_os_error();
        // Another process created it meanwhile: fine, as with `mkdir -p`.
        if e.raw_os_error() == Some(ERROR_ALREADY_EXISTS as i32) && dir.is_dir() {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// A new staged file in `dir` with a random name, created exclusively
/// (`CREATE_NEW`) with the owner-only DACL.
pub(crate) fn create_staged(builder: &tempfile::Builder, dir: &Path) -> io::Result<NamedTempFile> {
    let sd = OwnerOnly::new(Kind::File)?;
    // `make_in` retries with another name when this returns AlreadyExists
    // (ERROR_FILE_EXISTS maps to it) and deletes the file if dropped.
    // WRITE_DAC: a replacement that keeps the old file's access list
    // (`copy_owner_and_mode`) sets it on this handle before the rename.
    builder.make_in(dir, |path| {
        create_file(
            path,
            GENERIC_READ | GENERIC_WRITE | WRITE_DAC,
            CREATE_NEW,
            &sd,
        )
    })
}

/// Moves the staged file to `target` with `MoveFileExW`. Our handle is
/// closed first (the data is already synced), so only the rename itself can
/// fail; if it does, the staged file is deleted when `path` drops.
pub(crate) fn persist(file: NamedTempFile, target: &Path, clobber: Clobber) -> io::Result<()> {
    let (file, mut path) = file.into_parts();
    drop(file);
    let mut flags = MOVEFILE_WRITE_THROUGH;
    if clobber == Clobber::Replace {
        flags |= MOVEFILE_REPLACE_EXISTING;
    }
    let from = wide(&path)?;
    let to = wide(target)?;
    // SAFETY: both strings are NUL-terminated and live across the call.
    let ok = unsafe { MoveFileExW(from.as_ptr(), to.as_ptr(), flags) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // The file now lives at `target`: the temporary name must not be
    // deleted on drop (something else could have taken it by then).
    path.disable_cleanup(true);
    Ok(())
}

/// Opens `path` for appending, creating it with the owner-only DACL if it
/// is missing (`OPEN_ALWAYS`: the security attributes apply only when the
/// call creates the file; an existing file keeps its own).
///
/// The access mask is `std`'s append mode (`FILE_GENERIC_WRITE` without
/// `FILE_WRITE_DATA`, so every write goes to the end) plus
/// `FILE_GENERIC_READ`: `LockFileEx`, behind `File::try_lock`, refuses a
/// handle with neither read nor write-data access (ERROR_ACCESS_DENIED), so
/// an append-only handle could not take the home's lock on Windows.
pub(crate) fn open_append_private(path: &Path) -> io::Result<File> {
    let sd = OwnerOnly::new(Kind::File)?;
    create_file(
        path,
        FILE_GENERIC_READ | (FILE_GENERIC_WRITE & !FILE_WRITE_DATA),
        OPEN_ALWAYS,
        &sd,
    )
}

/// Nothing to do: `persist` renamed with `MOVEFILE_WRITE_THROUGH`, and
/// Windows offers no fsync of a directory.
pub(crate) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Reads the file's DACL: true when there is no DACL at all (everyone has
/// access), or when an allow ACE that applies to the file grants read (or
/// the right to change the DACL or owner) to anyone other than the file's
/// owner, the current user, SYSTEM, Administrators or OWNER RIGHTS. Deny
/// ACEs are ignored (a conservative answer), and an allow ACE of a type this
/// code does not parse counts as shared.
pub(crate) fn is_shared_readable(path: &Path) -> io::Result<bool> {
    let user = CurrentUser::get()?;
    let security = FileSecurity::of(path)?;
    let (owner, dacl) = (security.owner, security.dacl);
    if dacl.is_null() {
        return Ok(true);
    }
    // SAFETY: `dacl` points at a valid ACL inside `security`.
    let count = unsafe { (*dacl).AceCount };
    for index in 0..u32::from(count) {
        let mut ace: *mut c_void = ptr::null_mut();
        // SAFETY: `index` < AceCount; GetAce stores a pointer into the ACL.
        if unsafe { GetAce(dacl, index, &mut ace) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: every ACE starts with an ACE_HEADER.
        let header = unsafe { &*(ace as *const ACE_HEADER) };
        if u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0 {
            continue; // applies to children only, not to this object
        }
        match header.AceType {
            ACCESS_DENIED_ACE_TYPE | ACCESS_DENIED_CALLBACK_ACE_TYPE => continue,
            ACCESS_ALLOWED_ACE_TYPE | ACCESS_ALLOWED_CALLBACK_ACE_TYPE => {}
            _ => return Ok(true),
        }
        // SAFETY: allowed and allowed-callback ACEs share the layout
        // header, mask, SID (the callback's application data follows the
        // SID); the SID starts at `SidStart`.
        let allowed = unsafe { &*(ace as *const ACCESS_ALLOWED_ACE) };
        if allowed.Mask & (FILE_READ_DATA | GENERIC_READ | GENERIC_ALL | WRITE_DAC | WRITE_OWNER)
            == 0
        {
            continue;
        }
        let sid = &allowed.SidStart as *const u32 as PSID;
        // SAFETY: `sid`, `owner` and the user's SID are valid SIDs.
        let trusted = unsafe {
            (!owner.is_null() && EqualSid(sid, owner) != 0)
                || EqualSid(sid, user.sid()) != 0
                || IsWellKnownSid(sid, WinLocalSystemSid) != 0
                || IsWellKnownSid(sid, WinBuiltinAdministratorsSid) != 0
                || IsWellKnownSid(sid, WinCreatorOwnerRightsSid) != 0
        };
        if !trusted {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Gives `to` (a staged file about to replace `from`) the DACL of `from`,
/// so that the service that reads the file (PostgreSQL, the application)
/// still can: the staged file was created owner-only. A protected DACL is
/// copied as it is; an inherited one is re-inherited from the folder. The
/// owner stays the caller (changing it needs privileges a copy must not
/// assume).
/// See [`crate::fsutil::foreign_control`]: not judged on Windows.
pub(crate) fn foreign_control(_path: &Path, _follow: bool) -> io::Result<Option<String>> {
    Ok(None)
}

pub(crate) fn copy_owner_and_mode(from: &Path, to: &File) -> io::Result<()> {
    let security = FileSecurity::of(from)?;
    let (sd, dacl) = (security.sd.0, security.dacl);
    let mut control: u16 = 0;
    let mut revision: u32 = 0;
    // SAFETY: `sd` is a valid security descriptor; out pointers are valid.
    if unsafe { GetSecurityDescriptorControl(sd, &mut control, &mut revision) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let inheritance = if control & SE_DACL_PROTECTED != 0 {
        PROTECTED_DACL_SECURITY_INFORMATION
    } else {
        UNPROTECTED_DACL_SECURITY_INFORMATION
    };
    // SAFETY: `to` is an open file handle; `dacl` points into `sd`, which
    // `security` keeps alive until after this call.
    let err = unsafe {
        SetSecurityInfo(
            to.as_raw_handle() as HANDLE,
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | inheritance,
            ptr::null_mut(),
            ptr::null_mut(),
            dacl,
            ptr::null(),
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    Ok(())
}

/// `to` gets the access list of `owner` (the data directory, whose list
/// names the server's account and the administrators, and no one else on a
/// default installation).
pub(crate) fn private_to(owner: &Path, to: &File) -> io::Result<()> {
    copy_owner_and_mode(owner, to)
}

/// Bytes available to the caller on the volume that holds `path`.
pub(crate) fn available_space(path: &Path) -> io::Result<u64> {
    let wide = wide(path)?;
    let mut available: u64 = 0;
    // SAFETY: `wide` is NUL-terminated and outlives the call; the other
    // out-parameters may be null.
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            wide.as_ptr(),
            &mut available,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(available)
}

/// `CreateFileW` with the security descriptor `sd`, as a `File`.
fn create_file(path: &Path, access: u32, disposition: u32, sd: &OwnerOnly) -> io::Result<File> {
    let wide = wide(path)?;
    let attrs = sd.attributes();
    // SAFETY: `wide` is NUL-terminated; `attrs` and the descriptor it points
    // at outlive the call; no template handle.
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            access,
            // `std`'s default sharing, which renaming an open file needs.
            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
            &attrs,
            disposition,
            FILE_ATTRIBUTE_NORMAL,
            ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `handle` is a valid file handle that nothing else owns; the
    // `File` closes it.
    Ok(unsafe { File::from_raw_handle(handle as RawHandle) })
}

/// `path` as a NUL-terminated UTF-16 string.
fn wide(path: &Path) -> io::Result<Vec<u16>> {
    let mut w: Vec<u16> = path.as_os_str().encode_wide().collect();
    if w.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path contains a NUL character",
        ));
    }
    w.extend(iter::once(0));
    Ok(w)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

/// The owner-only security descriptor, built from SDDL for the current
/// user; freed on drop.
struct OwnerOnly(LocalBox);

impl OwnerOnly {
    fn new(kind: Kind) -> io::Result<Self> {
        let sddl = owner_only_sddl(&CurrentUser::get()?.sid_string()?, kind);
        let wide: Vec<u16> = sddl.encode_utf16().chain(iter::once(0)).collect();
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated; on success `sd` receives a
        // LocalAlloc-ed descriptor that `LocalBox` frees.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(LocalBox(sd)))
    }

    /// Attributes that point at this descriptor; valid while `self` is.
    fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.0 .0,
            bInheritHandle: 0,
        }
    }
}

/// `D:P(A;;FA;;;<user>)(A;;FA;;;SY)(A;;FA;;;BA)`, with `OICI` on each ACE
/// for a directory; no separate user ACE when the user is SYSTEM.
fn owner_only_sddl(user_sid: &str, kind: Kind) -> String {
    let inherit = match kind {
        Kind::File => "",
        Kind::Dir => "OICI",
    };
    let mut sddl = String::from("D:P");
    if user_sid != LOCAL_SYSTEM_SID {
        sddl.push_str(&format!("(A;{inherit};FA;;;{user_sid})"));
    }
    sddl.push_str(&format!("(A;{inherit};FA;;;SY)(A;{inherit};FA;;;BA)"));
    sddl
}

/// A file's owner and DACL as `GetNamedSecurityInfoW` returns them: both
/// point into `sd`, which lives as long as this value.
struct FileSecurity {
    sd: LocalBox,
    owner: PSID,
    dacl: *mut ACL,
}

impl FileSecurity {
    fn of(path: &Path) -> io::Result<Self> {
        let wide = wide(path)?;
        let mut owner: PSID = ptr::null_mut();
        let mut dacl: *mut ACL = ptr::null_mut();
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated; the out pointers are valid; on
        // success `sd` is a LocalAlloc-ed block that `owner` and `dacl`
        // point into, owned (and freed) by the returned value.
        let err = unsafe {
            GetNamedSecurityInfoW(
                wide.as_ptr(),
                SE_FILE_OBJECT,
                OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
                &mut owner,
                ptr::null_mut(),
                &mut dacl,
                ptr::null_mut(),
                &mut sd,
            )
        };
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err as i32));
        }
        Ok(Self {
            sd: LocalBox(sd),
            owner,
            dacl,
        })
    }
}

/// A block from `LocalAlloc` (as security APIs return), freed on drop.
struct LocalBox(*mut c_void);

impl Drop for LocalBox {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from an API that allocates with
            // LocalAlloc and hands ownership to the caller; freed once.
            unsafe { LocalFree(self.0) };
        }
    }
}

/// The process token's user (`TOKEN_USER`), kept in an aligned buffer.
struct CurrentUser {
    buf: Vec<u64>,
}

impl CurrentUser {
    fn get() -> io::Result<Self> {
        let mut token: HANDLE = ptr::null_mut();
        // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` is a
        // valid out pointer and is closed below.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let result = Self::from_token(token);
        // SAFETY: `token` is an open handle we own.
        unsafe { CloseHandle(token) };
        result
    }

    fn from_token(token: HANDLE) -> io::Result<Self> {
        let mut len = 0u32;
        // SAFETY: a size query: no buffer, `len` receives the size needed.
        let ok = unsafe { GetTokenInformation(token, TokenUser, ptr::null_mut(), 0, &mut len) };
        if ok == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(ERROR_INSUFFICIENT_BUFFER as i32) {
                return Err(e);
            }
        }
        let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
        // SAFETY: `buf` holds at least `len` bytes, 8-byte aligned as
        // TOKEN_USER requires.
        let ok = unsafe {
            GetTokenInformation(
                token,
                TokenUser,
                buf.as_mut_ptr() as *mut c_void,
                len,
                &mut len,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { buf })
    }

    fn sid(&self) -> PSID {
        // SAFETY: `buf` holds a TOKEN_USER written by GetTokenInformation;
        // its SID points into the same buffer, alive as long as `self`.
        unsafe { (*(self.buf.as_ptr() as *const TOKEN_USER)).User.Sid }
    }

    fn sid_string(&self) -> io::Result<String> {
        let mut text: *mut u16 = ptr::null_mut();
        // SAFETY: `sid()` is a valid SID; on success `text` is a
        // LocalAlloc-ed NUL-terminated string that `_guard` frees.
        if unsafe { ConvertSidToStringSidW(self.sid(), &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let _guard = LocalBox(text as *mut c_void);
        // SAFETY: `text` is NUL-terminated; we read up to the NUL.
        let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
        // SAFETY: `len` u16s starting at `text` were just read.
        let units = unsafe { std::slice::from_raw_parts(text, len) };
        Ok(String::from_utf16_lossy(units))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sddl_names_the_user_system_and_administrators_only() {
        assert_eq!(
            owner_only_sddl("S-1-5-21-1-2-3-1001", Kind::File),
            "D:P(A;;FA;;;S-1-5-21-1-2-3-1001)(A;;FA;;;SY)(A;;FA;;;BA)"
        );
        assert_eq!(
            owner_only_sddl("S-1-5-21-1-2-3-1001", Kind::Dir),
            "D:P(A;OICI;FA;;;S-1-5-21-1-2-3-1001)(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"
        );
        assert_eq!(
            owner_only_sddl(LOCAL_SYSTEM_SID, Kind::File),
            "D:P(A;;FA;;;SY)(A;;FA;;;BA)"
        );
    }

    #[test]
    fn created_directories_and_files_are_not_shared() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("a").join("home");
        super::super::ensure_private_dir(&home).unwrap();
        assert!(!is_shared_readable(&home).unwrap());
        assert!(!is_shared_readable(home.parent().unwrap()).unwrap());
        let log = home.join("audit.log");
        drop(open_append_private(&log).unwrap());
        assert!(!is_shared_readable(&log).unwrap());
    }

    /// `LockFileEx` needs read or write-data access; a plain append handle
    /// has neither and fails on Windows (Wine does not enforce this).
    #[test]
    fn an_append_handle_can_take_the_home_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyferry.lock");
        let first = open_append_private(&path).unwrap();
        first.try_lock().unwrap();
        let second = open_append_private(&path).unwrap();
        assert!(matches!(
            second.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
    }

    #[test]
    fn a_file_readable_by_everyone_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        // Give Everyone read through a fresh, unprotected descriptor.
        let sd = {
            let sddl: Vec<u16> = "D:(A;;FR;;;WD)(A;;FA;;;SY)"
                .encode_utf16()
                .chain(iter::once(0))
                .collect();
            let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
            // SAFETY: as in `OwnerOnly::new`.
            let ok = unsafe {
                ConvertStringSecurityDescriptorToSecurityDescriptorW(
                    sddl.as_ptr(),
                    SDDL_REVISION_1,
                    &mut sd,
                    ptr::null_mut(),
                )
            };
            assert_ne!(ok, 0);
            LocalBox(sd)
        };
        let attrs = SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: sd.0,
            bInheritHandle: 0,
        };
        let shared = dir.path().join("shared.txt");
        let wide_path = wide(&shared).unwrap();
        // SAFETY: as in `create_file`.
        let handle = unsafe {
            CreateFileW(
                wide_path.as_ptr(),
                GENERIC_WRITE,
                0,
                &attrs,
                CREATE_NEW,
                FILE_ATTRIBUTE_NORMAL,
                ptr::null_mut(),
            )
        };
        assert_ne!(handle, INVALID_HANDLE_VALUE);
        // SAFETY: a handle we own.
        unsafe { CloseHandle(handle) };
        assert!(is_shared_readable(&shared).unwrap());
    }
}
