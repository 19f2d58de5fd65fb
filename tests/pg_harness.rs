//! A real PostgreSQL server accepts what `keyferry::ha::hba` writes, and
//! reads `pg_hba.conf` the way keyferry's tokenizer does.
#![cfg(unix)]

mod common;

use common::pg::{PgOptions, PgServer};
use keyferry::ha::hba::{self, HbaMethod};
use keyferry::ha::PeerAddr;

const ODD_SPACING: &[u8] = include_bytes!("vectors/hba/odd-spacing.conf");

/// One rule as PostgreSQL parsed it.
#[derive(Debug, PartialEq)]
struct ParsedRule {
    line: i32,
    database: Vec<String>,
    user: Vec<String>,
    address: Option<String>,
    netmask: Option<String>,
    method: String,
}

fn rules_for(server: &PgServer, address: &str) -> Vec<ParsedRule> {
    server
        .connect()
        .query(
            "SELECT line_number, database, user_name, address, netmask, auth_method \
             FROM pg_hba_file_rules WHERE address = $1 ORDER BY line_number",
            &[&address],
        )
        .expect("query pg_hba_file_rules")
        .iter()
        .map(|row| ParsedRule {
            line: row.get(0),
            database: row.get(1),
            user: row.get(2),
            address: row.get(3),
            netmask: row.get(4),
            method: row.get(5),
        })
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn server_starts_and_answers_sql() {
    let Some(server) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    let version: String = server
        .connect()
        .query_one("SELECT version()", &[])
        .unwrap()
        .get(0);
    assert!(version.starts_with("PostgreSQL "), "{version}");
    server.create_replication_user("repuser", "it's a \"test\" password");
    let replicates: bool = server
        .connect_as("repuser", "it's a \"test\" password")
        .query_one(
            "SELECT rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(replicates);
}

#[test]
fn postgres_accepts_the_blocks_hba_ensure_writes_and_reports_a_broken_line() {
    let Some(server) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    let original = server.read_hba();
    let v4 = PeerAddr::parse("10.213.0.2").unwrap();
    let v6 = PeerAddr::parse("2001:db8::2").unwrap();

    // The file initdb wrote is a real-world vector for the byte invariant.
    let with_v4 = hba::ensure(&original, &v4, "repuser", HbaMethod::ScramSha256).unwrap();
    assert_eq!(hba::remove(&with_v4.text, &v4).unwrap().text, original);

    let mut text = with_v4.text;
    text.extend_from_slice(ODD_SPACING);
    let text = hba::ensure(&text, &v6, "repuser", HbaMethod::Md5)
        .unwrap()
        .text;
    server.write_hba(&text);
    assert_eq!(
        server.hba_file_errors(),
        [],
        "PostgreSQL rejects a line of:\n{}",
        String::from_utf8_lossy(&text)
    );

    let blocks = hba::managed_blocks(&text).unwrap();
    let v4_lines: Vec<i32> = blocks[0].records.iter().map(|r| r.line as i32).collect();
    assert_eq!(
        rules_for(&server, "10.213.0.2"),
        [
            ParsedRule {
                line: v4_lines[0],
                database: strings(&["replication"]),
                user: strings(&["repuser"]),
                address: Some("10.213.0.2".into()),
                netmask: Some("255.255.255.255".into()),
                method: "scram-sha-256".into(),
            },
            ParsedRule {
                line: v4_lines[1],
                database: strings(&["all"]),
                user: strings(&["all"]),
                address: Some("10.213.0.2".into()),
                netmask: Some("255.255.255.255".into()),
                method: "scram-sha-256".into(),
            },
        ]
    );
    let v6_rules = rules_for(&server, "2001:db8::2");
    assert_eq!(v6_rules.len(), 2);
    for rule in &v6_rules {
        assert_eq!(
            rule.netmask.as_deref(),
            Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        assert_eq!(rule.method, "md5");
    }

    // PostgreSQL and keyferry's tokenizer agree on every record: where it
    // starts, its databases and users (quotes, commas, continuations).
    let pg_records: Vec<(i32, Vec<String>, Vec<String>)> = server
        .connect()
        .query(
            "SELECT line_number, database, user_name FROM pg_hba_file_rules ORDER BY line_number",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let texts = |field: &[hba::HbaToken]| field.iter().map(|t| t.text.clone()).collect::<Vec<_>>();
    let our_records: Vec<(i32, Vec<String>, Vec<String>)> = hba::tokenize(&text)
        .iter()
        .map(|r| (r.line as i32, texts(&r.fields[1]), texts(&r.fields[2])))
        .collect();
    assert_eq!(our_records, pg_records);

    // A bad line is reported with its number, the keyferry lines are not.
    let mut broken = text.clone();
    broken.extend_from_slice(b"host all all 10.0.0.300/32 scram-sha-256\n");
    let broken_line = broken.iter().filter(|&&b| b == b'\n').count() as i32;
    server.write_hba(&broken);
    let errors = server.hba_file_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, broken_line);
}
