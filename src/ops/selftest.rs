//! `keyferry selftest`: known-answer tests of every primitive, the
//! checked-in bundle vectors, a real export -> import between two throw-away
//! homes, and the KDF time at the default parameters on this machine.
//!
//! The vectors are compiled in from `tests/vectors/`, so the binary checks
//! itself wherever it is copied.

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, AssociatedData, ParamsBuilder, Version};
use hkdf::Hkdf;
use hmac::Mac;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::export::{self, Expiry, ExportOptions};
use super::import::{self, ImportOptions};
use super::{init, Home};
use crate::aead::Cipher;
use crate::bundle::{self, BundleError, OpenOptions};
use crate::error::{Error, Result};
use crate::kdf::{self, KdfLimits, KdfParams};
use crate::payload::{self, DiscardConfig};
use crate::secret::{Password, PasswordSource};

const KAT: &str = include_str!("../../tests/vectors/kat.json");
const VECTORS: &str = include_str!("../../tests/vectors/independent/vectors.json");

/// The independent bundle vectors, by file name.
fn vector_file(name: &str) -> Option<&'static [u8]> {
    Some(match name {
        "keys.kfb" => include_bytes!("../../tests/vectors/independent/keys.kfb"),
        "keys.asc" => include_bytes!("../../tests/vectors/independent/keys.asc"),
        "keys-expired.kfb" => include_bytes!("../../tests/vectors/independent/keys-expired.kfb"),
        "keys-p4.kfb" => include_bytes!("../../tests/vectors/independent/keys-p4.kfb"),
        "multichunk.kfb" => include_bytes!("../../tests/vectors/independent/multichunk.kfb"),
        "onechunk-full.kfb" => include_bytes!("../../tests/vectors/independent/onechunk-full.kfb"),
        "empty.kfb" => include_bytes!("../../tests/vectors/independent/empty.kfb"),
        _ => return None,
    })
}

#[derive(Deserialize)]
struct Kat {
    argon2id: Argon2Kat,
    aes256gcm: Vec<GcmKat>,
    hkdf_sha256: HkdfKat,
    hmac_sha256: HmacKat,
}

#[derive(Deserialize)]
struct Argon2Kat {
    password: String,
    salt: String,
    secret: String,
    ad: String,
    m: u32,
    t: u32,
    p: u32,
    tag: String,
}

#[derive(Deserialize)]
struct GcmKat {
    key: String,
    nonce: String,
    aad: String,
    plaintext: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct HkdfKat {
    ikm: String,
    salt: String,
    info: String,
    okm: String,
}

#[derive(Deserialize)]
struct HmacKat {
    key: String,
    data: String,
    mac: String,
}

/// One bundle vector, as described in `vectors.json`.
#[derive(Deserialize)]
pub(crate) struct Vector {
    pub file: String,
    pub password: String,
    pub kdf: [u32; 3],
    pub created: u64,
    pub expires: Option<u64>,
    pub payload_sha256: String,
    pub payload_len: u64,
    pub fingerprint: Option<String>,
}

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

/// The bundle vectors compiled into this binary, with their bytes.
pub(crate) fn bundle_vectors() -> Vec<(Vector, &'static [u8])> {
    let v: Vectors = serde_json::from_str(VECTORS).expect("vectors.json is valid");
    v.vectors
        .into_iter()
        .map(|v| {
            let bytes = vector_file(&v.file).expect("every listed vector is compiled in");
            (v, bytes)
        })
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("KAT hex")
}

/// One line of the report.
pub(crate) struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

pub(crate) struct SelftestReport {
    pub checks: Vec<Check>,
    /// Wall-clock time of one derivation at [`KdfParams::DEFAULT`].
    pub kdf_default_time: Duration,
}

impl SelftestReport {
    pub(crate) fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

fn check(name: &str, passed: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        detail: detail.into(),
    }
}

fn argon2_kat(k: &Argon2Kat) -> Check {
    let secret = unhex(&k.secret);
    let mut builder = ParamsBuilder::new();
    builder.m_cost(k.m).t_cost(k.t).p_cost(k.p).output_len(32);
    builder.data(AssociatedData::new(&unhex(&k.ad)).expect("short AD"));
    let params = builder.build().expect("KAT parameters");
    let argon = Argon2::new_with_secret(&secret, Algorithm::Argon2id, Version::V0x13, params)
        .expect("KAT secret");
    let mut out = [0u8; 32];
    let ok = kdf::hash_into(&argon, &unhex(&k.password), &unhex(&k.salt), &mut out).is_ok()
        && hex::encode(out) == k.tag;
    check("Argon2id (RFC 9106 5.3)", ok, hex::encode(out))
}

fn gcm_kat(cases: &[GcmKat]) -> Check {
    let ok = cases.iter().all(|c| {
        let key: [u8; 32] = unhex(&c.key).try_into().expect("32-byte key");
        let cipher = Cipher::new(&key);
        let nonce: [u8; 12] = unhex(&c.nonce).try_into().expect("12-byte nonce");
        let mut buf = unhex(&c.plaintext);
        let tag = cipher.seal_in_place(&nonce, &unhex(&c.aad), &mut buf);
        if hex::encode(&buf) != c.ciphertext || hex::encode(tag) != c.tag {
            return false;
        }
        cipher
            .open_in_place(&nonce, &unhex(&c.aad), &mut buf, &tag)
            .is_ok()
            && hex::encode(&buf) == c.plaintext
    });
    check(
        "AES-256-GCM (GCM spec cases 13, 14)",
        ok,
        format!("{} cases", cases.len()),
    )
}

fn hkdf_kat(k: &HkdfKat) -> Check {
    let want = unhex(&k.okm);
    let mut okm = vec![0u8; want.len()];
    let ok = Hkdf::<Sha256>::new(Some(&unhex(&k.salt)), &unhex(&k.ikm))
        .expand(&unhex(&k.info), &mut okm)
        .is_ok()
        && okm == want;
    check("HKDF-SHA256 (RFC 5869 case 1)", ok, "")
}

fn hmac_kat(k: &HmacKat) -> Check {
    let mut mac =
        <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&unhex(&k.key)).expect("any key");
    mac.update(&unhex(&k.data));
    let ok = hex::encode(mac.finalize().into_bytes()) == k.mac;
    check("HMAC-SHA256 (RFC 4231 case 2)", ok, "")
}

/// Opens one vector and returns the SHA-256 and length of its payload.
pub(crate) fn open_vector(
    bytes: &[u8],
    password: &str,
    now: u64,
) -> std::result::Result<(String, u64, bundle::Header), Error> {
    let mut reader = bundle::read_header(bytes, &KdfLimits::default())?.unlock(
        &Password::from_typed(password),
        &OpenOptions {
            now,
            allow_expired: false,
        },
    )?;
    let mut h = Sha256::new();
    let len = reader.parse_payload(|plain| -> std::result::Result<u64, BundleError> {
        let mut len = 0;
        loop {
            let chunk = plain.fill_buf().map_err(BundleError::Io)?;
            if chunk.is_empty() {
                return Ok(len);
            }
            h.update(chunk);
            let n = chunk.len();
            plain.consume(n);
            len += n as u64;
        }
    })?;
    Ok((hex::encode(h.finalize()), len, reader.header().clone()))
}

fn vector_checks(now: u64) -> Vec<Check> {
    bundle_vectors()
        .into_iter()
        .map(|(v, bytes)| {
            let name = format!("bundle vector {} ({:?})", v.file, v.password);
            let expired = v.expires.is_some_and(|e| e <= now);
            match open_vector(bytes, &v.password, now) {
                Ok((sha, len, header)) if !expired => {
                    let kdf = [header.kdf.memory_kib, header.kdf.time, header.kdf.lanes];
                    check(
                        &name,
                        sha == v.payload_sha256
                            && len == v.payload_len
                            && kdf == v.kdf
                            && header.created == v.created
                            && header.expires == v.expires,
                        format!("{len} bytes"),
                    )
                }
                Err(Error::Bundle(BundleError::Expired { .. })) if expired => {
                    check(&name, true, "refused as expired, as it must be")
                }
                Ok(_) => check(&name, false, "opened although expired"),
                Err(e) => check(&name, false, e.to_string()),
            }
        })
        .collect()
}

/// The keyring inside `keys.kfb` must have the published fingerprint.
fn vector_fingerprint_check(now: u64) -> Check {
    let (v, bytes) = bundle_vectors()
        .into_iter()
        .find(|(v, _)| v.file == "keys.kfb")
        .expect("keys.kfb is listed");
    let result = (|| -> Result<String> {
        let mut reader = bundle::read_header(bytes, &KdfLimits::default())?.unlock(
            &Password::from_typed(&v.password),
            &OpenOptions {
                now,
                allow_expired: false,
            },
        )?;
        let p = reader.parse_payload(|plain| {
            payload::read(plain, payload::DEFAULT_MAX_TOTAL, &mut DiscardConfig).map(|(p, _)| p)
        })?;
        Ok(p.keyring.fingerprint().to_string())
    })();
    match result {
        Ok(fp) => check(
            "keys.kfb keyring fingerprint",
            Some(&fp) == v.fingerprint.as_ref(),
            fp,
        ),
        Err(e) => check("keys.kfb keyring fingerprint", false, e.to_string()),
    }
}

fn round_trip() -> Check {
    let name = "export -> import between two throw-away homes";
    let result = (|| -> Result<String> {
        let dir = tempfile::tempdir().map_err(Error::io("cannot create a temporary folder"))?;
        let (a, b) = (
            Home::new(dir.path().join("a")),
            Home::new(dir.path().join("b")),
        );
        let created = init::init(&a)?;
        let pw_file = dir.path().join("pw");
        std::fs::write(&pw_file, "selftest password\n").map_err(Error::io("cannot write"))?;
        let file = dir.path().join("keys.exp");
        export::export(
            &a,
            &ExportOptions {
                file: file.clone(),
                with_config: false,
                armor: true,
                expiry: Expiry::After(export::DEFAULT_EXPIRY),
                kdf: KdfParams::MINIMUM,
                password: Some(PasswordSource::File(pw_file.clone())),
            },
        )?;
        let report = import::import(
            &b,
            &ImportOptions {
                file,
                password: PasswordSource::File(pw_file),
                keys_only: false,
                allow_expired: false,
                max_kdf_memory: None,
                delete: true,
                accept_config: false,
                node_name: None,
                dry_run: false,
                replace_keys: false,
                paths: Default::default(),
            },
        )?;
        if report.after != created.fingerprint {
            return Err(Error::Refused(format!(
                "imported {} but exported {}",
                report.after, created.fingerprint
            )));
        }
        super::audit_log::verify(&b)?;
        Ok(report.after.to_string())
    })();
    match result {
        Ok(fp) => check(name, true, fp),
        Err(e) => check(name, false, e.to_string()),
    }
}

pub(crate) fn selftest() -> Result<SelftestReport> {
    let kat: Kat = serde_json::from_str(KAT).expect("kat.json is valid");
    let now = super::now_unix();
    let mut checks = vec![
        argon2_kat(&kat.argon2id),
        gcm_kat(&kat.aes256gcm),
        hkdf_kat(&kat.hkdf_sha256),
        hmac_kat(&kat.hmac_sha256),
    ];
    checks.extend(vector_checks(now));
    checks.push(vector_fingerprint_check(now));
    checks.push(round_trip());
    let start = Instant::now();
    kdf::derive_kek(b"selftest timing", &[0u8; 16], &KdfParams::DEFAULT)?;
    let kdf_default_time = start.elapsed();
    Ok(SelftestReport {
        checks,
        kdf_default_time,
    })
}
