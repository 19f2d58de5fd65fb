//! Argon2id: the parameters a bundle carries, the presets keyferry exports
//! with, the limits an importer enforces, and the derivation itself.
//!
//! Invariants:
//! - export never uses parameters below [`MIN_EXPORT_MEMORY_KIB`] /
//!   [`MIN_EXPORT_TIME`]; parameters are chosen by preset or by the operator,
//!   never calibrated per machine, so a bundle opens the same everywhere;
//! - import refuses parameters above its limits *before* any memory is
//!   allocated, so a hostile header cannot exhaust a host;
//! - Argon2's working memory is a `Vec` of blocks that this module
//!   allocates (an allocation failure is an error, not an abort) and wipes
//!   before it is freed: the last block of each lane is all an attacker
//!   needs to recompute the derived key;
//! - the derived key lives in a zeroizing buffer.

use std::fmt;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use thiserror::Error;
use zeroize::Zeroizing;

/// KDF id 0x01 in the bundle header: Argon2id, Argon2 version 0x13.
pub(crate) const KDF_ID_ARGON2ID: u8 = 0x01;

/// OWASP's floor for Argon2id (19 MiB, 2 passes); below it a bundle's
/// password could be guessed too cheaply, so export refuses.
pub const MIN_EXPORT_MEMORY_KIB: u32 = 19_456;
pub const MIN_EXPORT_TIME: u32 = 2;

/// Import limits: a header asking for more is refused unless the operator
/// raises the memory limit (`--max-kdf-memory`). 1 GiB is the most a
/// production host should give a single import.
pub const MAX_IMPORT_MEMORY_KIB: u32 = 1024 * 1024;
pub const MAX_IMPORT_TIME: u32 = 16;
pub const MAX_IMPORT_LANES: u32 = 16;

/// Argon2 needs at least 8 KiB of memory per lane.
const MIN_MEMORY_PER_LANE_KIB: u32 = 8;

/// Length of the key-encryption key.
pub(crate) const KEK_LEN: usize = 32;

/// Argon2id cost parameters as stored in a bundle header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub time: u32,
    pub lanes: u32,
}

impl KdfParams {
    /// RFC 9106 section 4, second recommended option: 64 MiB, 3 passes,
    /// 4 lanes. Fast enough on a busy server, costly for a guesser.
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        time: 3,
        lanes: 4,
    };

    /// For bundles that travel over untrusted channels: 256 MiB, 4 passes.
    pub const STRONG: Self = Self {
        memory_kib: 256 * 1024,
        time: 4,
        lanes: 4,
    };

    /// The floor: allowed for export, used by tests and test vectors.
    pub const MINIMUM: Self = Self {
        memory_kib: MIN_EXPORT_MEMORY_KIB,
        time: MIN_EXPORT_TIME,
        lanes: 1,
    };

    /// Checks parameters an operator asked export to use.
    pub(crate) fn check_for_export(&self) -> Result<(), KdfError> {
        if self.memory_kib < MIN_EXPORT_MEMORY_KIB || self.time < MIN_EXPORT_TIME {
            return Err(KdfError::TooWeak(*self));
        }
        if self.lanes == 0 || self.lanes > MAX_IMPORT_LANES {
            return Err(KdfError::BadLanes(self.lanes));
        }
        if self.memory_kib < MIN_MEMORY_PER_LANE_KIB * self.lanes {
            return Err(KdfError::Invalid(*self));
        }
        // A bundle every default importer would refuse helps nobody.
        KdfLimits::default()
            .check(self)
            .map_err(|_| KdfError::OverImportLimit(*self))
    }

    /// Memory in MiB, rounded up, for messages.
    pub(crate) fn memory_mib(&self) -> u64 {
        u64::from(self.memory_kib).div_ceil(1024)
    }
}

impl fmt::Display for KdfParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Argon2id m={} KiB ({} MiB), t={}, p={}",
            self.memory_kib,
            self.memory_mib(),
            self.time,
            self.lanes
        )
    }
}

/// What an importer is willing to spend on one bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfLimits {
    pub max_memory_kib: u32,
    pub max_time: u32,
    pub max_lanes: u32,
}

impl Default for KdfLimits {
    fn default() -> Self {
        Self {
            max_memory_kib: MAX_IMPORT_MEMORY_KIB,
            max_time: MAX_IMPORT_TIME,
            max_lanes: MAX_IMPORT_LANES,
        }
    }
}

impl KdfLimits {
    /// Checks a bundle's parameters before anything is derived.
    pub(crate) fn check(&self, params: &KdfParams) -> Result<(), KdfError> {
        if params.time > self.max_time || params.lanes > self.max_lanes {
            return Err(KdfError::OverFixedLimit {
                asked: *params,
                limits: *self,
            });
        }
        if params.memory_kib > self.max_memory_kib {
            return Err(KdfError::OverLimit {
                asked: *params,
                limits: *self,
            });
        }
        if params.lanes == 0
            || params.time == 0
            || params.memory_kib < MIN_MEMORY_PER_LANE_KIB * params.lanes
        {
            return Err(KdfError::Invalid(*params));
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum KdfError {
    #[error(
        "KDF parameters {0} are below the export floor of m={MIN_EXPORT_MEMORY_KIB} KiB, \
         t={MIN_EXPORT_TIME}: use larger --kdf-memory/--kdf-time"
    )]
    TooWeak(KdfParams),
    #[error("--kdf-lanes {0} is out of range: use 1 to {MAX_IMPORT_LANES}")]
    BadLanes(u32),
    #[error(
        "KDF parameters {0} exceed what importers accept by default \
         (m<={MAX_IMPORT_MEMORY_KIB} KiB, t<={MAX_IMPORT_TIME}, p<={MAX_IMPORT_LANES}): use smaller values"
    )]
    OverImportLimit(KdfParams),
    #[error(
        "the bundle asks for {asked}, over this host's limit of m={} KiB, t={}, p={}; \
         if you trust where it came from, re-run with --max-kdf-memory {}",
        limits.max_memory_kib, limits.max_time, limits.max_lanes, asked.memory_kib
    )]
    OverLimit { asked: KdfParams, limits: KdfLimits },
    #[error(
        "the bundle asks for {asked}, over the limits of t<={}, p<={} that every importer keeps \
         (no option raises them): export it again on the primary with smaller --kdf-time and --kdf-lanes",
        limits.max_time, limits.max_lanes
    )]
    OverFixedLimit { asked: KdfParams, limits: KdfLimits },
    #[error("KDF parameters {0} are not valid for Argon2id (at least 8 KiB per lane, t>=1, p>=1)")]
    Invalid(KdfParams),
    #[error("Argon2id failed: {0}; the host may be out of memory")]
    Derive(String),
}

/// Derives the key-encryption key from the canonical password bytes.
pub fn derive_kek(
    password: &[u8],
    salt: &[u8],
    params: &KdfParams,
) -> Result<Zeroizing<[u8; KEK_LEN]>, KdfError> {
    let argon_params = Params::new(params.memory_kib, params.time, params.lanes, Some(KEK_LEN))
        .map_err(|_| KdfError::Invalid(*params))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    let mut kek = Zeroizing::new([0u8; KEK_LEN]);
    hash_into(&argon, password, salt, kek.as_mut())?;
    Ok(kek)
}

/// Runs `argon` in working memory that is wiped afterwards: the one place
/// keyferry calls Argon2, shared by [`derive_kek`] and the self-test's
/// RFC 9106 vector.
pub(crate) fn hash_into(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), KdfError> {
    let count = argon.params().block_count();
    let mut memory: Zeroizing<Vec<Block>> = Zeroizing::new(Vec::new());
    memory.try_reserve_exact(count).map_err(|_| {
        KdfError::Derive(format!(
            "cannot allocate {} MiB of working memory",
            (count as u64).div_ceil(1024)
        ))
    })?;
    memory.resize(count, Block::default());
    argon
        .hash_password_into_with_memory(password, salt, out, memory.as_mut_slice())
        .map_err(|e| KdfError::Derive(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiped_memory_gives_the_crates_own_result() {
        // Odd sizes (not a multiple of 4 lanes' worth of blocks) and lane
        // counts above and below the CPU count, against the `argon2`
        // crate's own allocation.
        for (m, t, p) in [(8, 1, 1), (100, 2, 3), (1031, 1, 4), (4096, 3, 8)] {
            let params = KdfParams {
                memory_kib: m,
                time: t,
                lanes: p,
            };
            let ours = derive_kek(b"password", b"somesalt", &params).unwrap();
            let reference = Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(m, t, p, Some(KEK_LEN)).unwrap(),
            );
            let mut theirs = [0u8; KEK_LEN];
            reference
                .hash_password_into(b"password", b"somesalt", &mut theirs)
                .unwrap();
            assert_eq!(*ours, theirs, "m={m} t={t} p={p}");
        }
    }

    #[test]
    fn export_floor_and_import_ceiling() {
        assert!(KdfParams::DEFAULT.check_for_export().is_ok());
        assert!(KdfParams::STRONG.check_for_export().is_ok());
        assert!(KdfParams::MINIMUM.check_for_export().is_ok());
        let weak = KdfParams {
            memory_kib: MIN_EXPORT_MEMORY_KIB - 1,
            ..KdfParams::DEFAULT
        };
        assert!(matches!(weak.check_for_export(), Err(KdfError::TooWeak(_))));
        let one_pass = KdfParams {
            time: 1,
            ..KdfParams::DEFAULT
        };
        assert!(matches!(
            one_pass.check_for_export(),
            Err(KdfError::TooWeak(_))
        ));
        let greedy = KdfParams {
            memory_kib: MAX_IMPORT_MEMORY_KIB + 1,
            ..KdfParams::DEFAULT
        };
        assert!(matches!(
            KdfLimits::default().check(&greedy),
            Err(KdfError::OverLimit { .. })
        ));
        let raised = KdfLimits {
            max_memory_kib: MAX_IMPORT_MEMORY_KIB * 2,
            ..KdfLimits::default()
        };
        assert!(raised.check(&greedy).is_ok());
    }

    #[test]
    fn over_limit_message_says_how_much_and_which_flag() {
        let greedy = KdfParams {
            memory_kib: 2 * 1024 * 1024,
            time: 3,
            lanes: 4,
        };
        let msg = KdfLimits::default().check(&greedy).unwrap_err().to_string();
        assert!(msg.contains("2048 MiB"), "{msg}");
        assert!(msg.contains("--max-kdf-memory 2097152"), "{msg}");
        for slow in [
            KdfParams {
                time: 17,
                ..KdfParams::DEFAULT
            },
            KdfParams {
                lanes: 17,
                memory_kib: 1 << 20,
                ..KdfParams::DEFAULT
            },
        ] {
            let msg = KdfLimits::default().check(&slow).unwrap_err().to_string();
            assert!(!msg.contains("--max-kdf-memory"), "{msg}");
            assert!(msg.contains("no option raises them"), "{msg}");
        }
    }
}
