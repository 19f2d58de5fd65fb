//! The rewrap benchmark (issue 15): fills a table with N values of 200
//! bytes sealed under key 1 of HOME's keyring (key 2 must be the primary),
//! times a plain `UPDATE t SET c = c` over the same rows as the baseline,
//! then `keyferry rewrap` of the table, and the census before and after.
//! Run by benches/rewrap_pg.sh, which starts a throw-away server.
//!
//! Usage: rewrap_bench HOME DSN PASSWORD ROWS KEYFERRY_BIN

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use keyferry::keyring::Keyring;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (home, dsn, password, rows, bin) =
        (&a[1], &a[2], &a[3], a[4].parse::<i64>().unwrap(), &a[5]);
    let mut config: postgres::Config = dsn.parse().unwrap();
    config.password(password.as_str());
    let mut c = config.connect(postgres::NoTls).unwrap();
    let mut k =
        Keyring::from_json(&std::fs::read(format!("{home}/keyring.json")).unwrap()).unwrap();
    let primary = k.primary();
    k.promote(1).unwrap();
    c.batch_execute("DROP TABLE IF EXISTS bench; CREATE TABLE bench (id bigint PRIMARY KEY, secret text NOT NULL)")
        .unwrap();
    let t = Instant::now();
    let mut w = c.copy_in("COPY bench (id, secret) FROM STDIN").unwrap();
    let value = [0x5au8; 200];
    for id in 1..=rows {
        let s = k.encrypt_text(&value, id.to_string().as_bytes()).unwrap();
        writeln!(w, "{id}\t{s}").unwrap();
    }
    w.finish().unwrap();
    c.batch_execute("VACUUM ANALYZE bench").unwrap();
    eprintln!("filled {rows} rows in {:.1} s", t.elapsed().as_secs_f64());

    let census = |label: &str| {
        let t = Instant::now();
        let out = Command::new(bin)
            .args([
                "--home", home, "rewrap", "--check", "--json", "--dsn", dsn, "--table", "bench",
                "--column", "secret",
            ])
            .env("PGPASSWORD_FILE_UNUSED", "")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        println!(
            "census {label}: {} in {:.2} s",
            v["by_key"],
            t.elapsed().as_secs_f64()
        );
    };
    census("before");

    let t = Instant::now();
    let n = c.execute("UPDATE bench SET secret = secret", &[]).unwrap();
    let base = t.elapsed().as_secs_f64();
    println!(
        "baseline UPDATE bench SET secret = secret: {n} rows in {base:.2} s = {:.0} rows/s",
        n as f64 / base
    );
    c.batch_execute("VACUUM bench").unwrap();

    // REWRAP_BATCH overrides the batch size (none: keyferry's default).
    let batch = std::env::var("REWRAP_BATCH").ok();
    let mut args = vec![
        "--home", home, "rewrap", "--json", "--aad", "{id}", "--dsn", dsn, "--table", "bench",
        "--column", "secret",
    ];
    if let Some(b) = &batch {
        args.extend(["--batch", b.as_str()]);
    }
    let t = Instant::now();
    let out = Command::new(bin)
        .args(&args)
        .env("KEYFERRY_LOG", "keyferry::ops::rewrap=debug")
        .output()
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "keyferry rewrap to key {primary}: {rows} rows in {took:.2} s = {:.0} rows/s ({:.0}% of the baseline rate)",
        rows as f64 / took,
        100.0 * (rows as f64 / took) / (n as f64 / base)
    );
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.contains("where the time went") {
            println!("  {}", line.trim());
        }
    }
    census("after");
}
