//! A whole `export` and `import` through `keyferry::ops`, with the real
//! files, locks, audit log and Argon2id at `KdfParams::DEFAULT`, of a
//! realistic keyring: 20 keys (17 enabled, 2 disabled, 1 destroyed), with
//! the pair's configuration (`ha.toml` and a 64 KiB `appsettings.json`).
//! The KDF alone at the same parameters is measured in the same group, so
//! the cost of everything but the KDF reads off as a difference (the
//! target: export and import cost no more than the KDF plus 20 ms).
//!
//! Invariant checked on the way: the importing node ends up with the
//! exporting node's keyring fingerprint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use keyferry::ha::config::HaConfig;
use keyferry::kdf::KdfParams;
use keyferry::keyring::{Key, KeyMaterial, KeyStatus, Keyring};
use keyferry::ops::export::{export, Expiry, ExportOptions};
use keyferry::ops::import::{import, ImportOptions};
use keyferry::ops::{init::init, Home};
use keyferry::secret::PasswordSource;

const KEYS: u32 = 20;
const APPSETTINGS_LEN: usize = 64 * 1024;

/// Initialises a home and gives it a 20-key keyring (the audit log keys
/// on the node state, which is kept, so it still verifies).
fn home_with_keyring(dir: &Path) -> Home {
    let home = Home::new(dir.join("node-a"));
    init(&home).unwrap();
    let mut store = home.load_keystore().unwrap();
    let keys = (1..=KEYS)
        .map(|id| {
            let status = match id {
                1 => KeyStatus::Destroyed,
                2 | 3 => KeyStatus::Disabled,
                _ => KeyStatus::Enabled,
            };
            Key {
                id,
                status,
                created: format!("2025-10-{:02}T08:00:00Z", id),
                algorithm: "aes-256-gcm".into(),
                material: (status != KeyStatus::Destroyed)
                    .then(|| KeyMaterial::generate().unwrap()),
            }
        })
        .collect();
    store.keyring = Keyring::new(KEYS, keys).unwrap();
    std::fs::write(home.keyring_path(), &*store.to_json()).unwrap();
    let app = dir.join("appsettings.json");
    std::fs::write(&app, vec![b'x'; APPSETTINGS_LEN]).unwrap();
    let mut ha = HaConfig::new(
        "bench-a",
        "10.1.0.1".parse().unwrap(),
        "10.1.0.2".parse().unwrap(),
    )
    .unwrap();
    ha.appsettings = Some(app);
    std::fs::write(home.ha_config_path(), ha.to_toml().unwrap()).unwrap();
    home
}

fn export_opts(file: PathBuf, password_file: &Path) -> ExportOptions {
    ExportOptions {
        file,
        with_config: true,
        armor: false,
        expiry: Expiry::After(Duration::from_secs(3600)),
        kdf: KdfParams::DEFAULT,
        password: Some(PasswordSource::File(password_file.to_path_buf())),
    }
}

fn import_opts(file: PathBuf, password_file: &Path) -> ImportOptions {
    ImportOptions {
        file,
        password: PasswordSource::File(password_file.to_path_buf()),
        keys_only: false,
        allow_expired: false,
        max_kdf_memory: None,
        delete: false,
        accept_config: true,
        node_name: Some("bench-b".into()),
        dry_run: false,
        replace_keys: true,
        paths: Default::default(),
    }
}

fn export_import(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "bench-password-0123456789\n").unwrap();
    let home = home_with_keyring(dir.path());
    let bundle = dir.path().join("keys.kfb");
    let report = export(&home, &export_opts(bundle.clone(), &password_file)).unwrap();

    let mut group = c.benchmark_group("ops");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    group.bench_function("kdf_default_alone", |b| {
        b.iter(|| {
            keyferry::kdf::derive_kek(
                b"bench-password-0123456789",
                &[0u8; 16],
                &KdfParams::DEFAULT,
            )
            .unwrap()
        })
    });
    group.bench_function("export_20_keys", |b| {
        let target = dir.path().join("bench-export.kfb");
        b.iter_batched(
            || {
                let _ = std::fs::remove_file(&target);
            },
            |()| export(&home, &export_opts(target.clone(), &password_file)).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("import_20_keys", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |to| {
                let node_b = Home::new(to.path().join("node-b"));
                let got = import(&node_b, &import_opts(bundle.clone(), &password_file)).unwrap();
                assert_eq!(got.after, report.fingerprint);
                to
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, export_import);
criterion_main!(benches);
