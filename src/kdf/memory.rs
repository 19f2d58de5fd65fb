//! Argon2id's working memory for one derivation: `m` KiB as 1 KiB blocks,
//! taken fresh from the operating system and handed back wiped.
//!
//! Why not `Vec<Block>`: a block is 64-byte aligned, more than `malloc`
//! guarantees, so the Rust allocator's zeroed allocation ends in a `memset`
//! of the whole area on one thread before Argon2 starts, page-faulting
//! 16 384 pages one after the other for the default 64 MiB. Memory mapped
//! straight from the OS is already zero; Argon2's first pass then faults it
//! in from every lane's thread at once. On Linux the mapping is also
//! aligned to 2 MiB and advised for transparent huge pages, which turns
//! those faults into 32. Measured on a 2-CPU machine at the default
//! parameters: 0.086 s per derivation through `Vec`, 0.069 s mapped, and
//! 0.044–0.051 s mapped on huge pages (benches/NOTES.md).
//!
//! Invariants:
//! - every block starts zeroed (Argon2's first pass writes each before it
//!   reads it, but zero is the only sound state for fresh memory);
//! - the blocks are wiped before the memory goes back: the last block of
//!   each lane is all an attacker needs to recompute the derived key.

use argon2::Block;
use zeroize::Zeroize;

/// Working memory of `len` Argon2 blocks; wiped and released on drop.
pub(crate) struct ArgonMemory {
    blocks: *mut Block,
    len: usize,
    _mapping: os::Mapping,
}

impl ArgonMemory {
    /// Zeroed memory for `len` blocks, or `None` when the OS refuses it.
    pub(crate) fn new(len: usize) -> Option<Self> {
        let bytes = len.checked_mul(Block::SIZE)?;
        let (mapping, blocks) = os::Mapping::new(bytes)?;
        Some(Self {
            blocks: blocks.cast(),
            len,
            _mapping: mapping,
        })
    }

    pub(crate) fn blocks(&mut self) -> &mut [Block] {
        // SAFETY: `blocks` points to `len` blocks of zero-initialised (and
        // thereafter only written through this slice) memory that lives as
        // long as `mapping`, i.e. as long as `self`; `&mut self` makes the
        // borrow unique. A block is plain `u64`s, valid for any bytes.
        unsafe { std::slice::from_raw_parts_mut(self.blocks, self.len) }
    }
}

impl Drop for ArgonMemory {
    fn drop(&mut self) {
        // `mapping` returns the memory once this has run.
        for block in self.blocks() {
            block.zeroize();
        }
    }
}

#[cfg(target_os = "linux")]
mod os {
    /// Huge pages on x86-64 and aarch64 with 4 KiB base pages.
    const HUGE_PAGE: usize = 2 << 20;

    /// An anonymous private mapping, unmapped on drop.
    pub(super) struct Mapping {
        base: *mut libc::c_void,
        len: usize,
    }

    impl Mapping {
        /// Maps `bytes` plus slack to align the start to a huge page, and
        /// returns the aligned start.
        pub(super) fn new(bytes: usize) -> Option<(Self, *mut u8)> {
            let len = bytes.checked_add(HUGE_PAGE)?;
            // SAFETY: a fresh anonymous mapping; no existing memory is touched.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return None;
            }
            let mapping = Self { base, len };
            let offset = (HUGE_PAGE - base as usize % HUGE_PAGE) % HUGE_PAGE;
            // SAFETY: `offset < HUGE_PAGE`, so `offset + bytes <= len`.
            let start = unsafe { base.cast::<u8>().add(offset) };
            // Only advice: where transparent huge pages are off or
            // unavailable the kernel uses small pages, which is still correct.
            // SAFETY: the range lies inside the mapping made above.
            unsafe { libc::madvise(start.cast(), bytes, libc::MADV_HUGEPAGE) };
            Some((mapping, start))
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: `base`/`len` are exactly the mapping made in `new`, and
            // no slice into it outlives the `ArgonMemory` that owns `self`.
            unsafe { libc::munmap(self.base, self.len) };
        }
    }
}

#[cfg(windows)]
mod os {
    use windows_sys::Win32::System::Memory::{
        VirtualAlloc, VirtualFree, MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_READWRITE,
    };

    /// Committed pages from `VirtualAlloc` (zeroed, 64 KiB aligned), released
    /// on drop.
    pub(super) struct Mapping {
        base: *mut core::ffi::c_void,
    }

    impl Mapping {
        pub(super) fn new(bytes: usize) -> Option<(Self, *mut u8)> {
            // SAFETY: a fresh allocation; no existing memory is touched.
            let base = unsafe {
                VirtualAlloc(
                    std::ptr::null(),
                    bytes,
                    MEM_COMMIT | MEM_RESERVE,
                    PAGE_READWRITE,
                )
            };
            if base.is_null() {
                return None;
            }
            Some((Self { base }, base.cast()))
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: `base` came from `VirtualAlloc` and is released once.
            unsafe { VirtualFree(self.base, 0, MEM_RELEASE) };
        }
    }
}

#[cfg(not(any(target_os = "linux", windows)))]
mod os {
    use argon2::Block;

    /// Elsewhere, the allocator's zeroed blocks.
    pub(super) struct Mapping {
        _blocks: Vec<Block>,
    }

    impl Mapping {
        pub(super) fn new(bytes: usize) -> Option<(Self, *mut u8)> {
            let mut blocks = vec![Block::default(); bytes / Block::SIZE];
            let start = blocks.as_mut_ptr().cast();
            Some((Self { _blocks: blocks }, start))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_start_zeroed_and_are_aligned() {
        let mut memory = ArgonMemory::new(3 * 1024 + 5).expect("a few MiB");
        let blocks = memory.blocks();
        assert_eq!(blocks.len(), 3 * 1024 + 5);
        assert_eq!(blocks.as_ptr() as usize % std::mem::align_of::<Block>(), 0);
        assert!(blocks.iter().all(|b| b.as_ref().iter().all(|w| *w == 0)));
        // Every block is writable to the end of the area.
        for (i, b) in blocks.iter_mut().enumerate() {
            b.as_mut()[127] = i as u64;
        }
        assert_eq!(blocks[3 * 1024 + 4].as_ref()[127], 3 * 1024 + 4);
    }
}
