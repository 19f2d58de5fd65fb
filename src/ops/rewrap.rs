//! `keyferry rewrap`: re-encrypts values stored in PostgreSQL that are not
//! under the primary key, and the census of stored values per key version.
//!
//! This module owns rewrap targets (a table's envelope column, its id
//! column and the aad template; kept in the home's `rewrap.json` or given
//! on the command line), the SQL of the census and of a rewrap batch, the
//! progress cursor table, and the census guard of `disable`/`destroy`.
//!
//! Invariants:
//! - a value is only ever replaced by an envelope of the same plaintext
//!   under the primary key, and only while it still holds the exact bytes
//!   that were read (compare-and-set in the `UPDATE`): a value the
//!   application changed meanwhile is never overwritten, only counted;
//! - each batch is one transaction that also moves the cursor
//!   (`keyferry_rewrap_progress`, in the same database), so a run that is
//!   interrupted, or resumed on a new primary after a failover, continues
//!   where the last committed batch ended; a finished run removes its
//!   cursor, so the next run starts from the first row;
//! - rows are walked in id order (keyset pagination); rows inserted behind
//!   the cursor are left for the next run, ahead of it are picked up;
//! - a batch is read, sealed and written by three stages at once (a
//!   reader with its own connection, the crypto, the writer), so the next
//!   batch is read and sealed while the last one is written; the reader
//!   may see a value older than the writer's snapshot, and the
//!   compare-and-set decides; a batch commits without waiting for the WAL
//!   flush (`synchronous_commit = off` for that transaction only): a batch
//!   lost to a server crash is lost with its cursor and simply done again,
//!   and either version of a value opens to the same plaintext;
//! - a value that cannot be opened is reported by id and left untouched;
//!   the run finishes the rest and fails at the end;
//! - the census reads the key id in SQL, without decrypting; `--verify`
//!   also opens every value (in this process; values are never logged);
//! - the run is audited as one irreversible step of a change (its start,
//!   then its counts), holding the home's lock so the keys cannot change
//!   under it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::Client;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lifecycle::{Guard, GuardFinding};
use super::progress::{Observer, Unit};
use super::{details, Home};
use crate::error::{Error, Result};
use crate::fsutil::Ownership;
use crate::keyring::envelope::{self, EnvelopeError};
use crate::keyring::{KeyStatus, Keyring};
use crate::pg::dsn::Dsn;

/// The home's file of rewrap targets.
pub(crate) const TARGETS_FILE: &str = crate::node::REWRAP_FILE;
/// The cursor table, created in the target's database.
pub const PROGRESS_TABLE: &str = "keyferry_rewrap_progress";
/// Rows per batch unless told otherwise.
pub const DEFAULT_BATCH: usize = 5000;

/// One column of envelopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Connection string, without a password.
    pub dsn: String,
    /// `table` or `schema.table`.
    pub table: String,
    pub column: String,
    #[serde(default = "default_id")]
    pub id_column: String,
    /// The aad each value was sealed with: `{id}`, `{table}` and
    /// `{column}` are replaced per row; empty by default.
    #[serde(default)]
    pub aad: String,
}

fn default_id() -> String {
    "id".into()
}

impl Target {
    /// `dsn-target table.column`, for messages and the cursor's name.
    pub fn name(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }

    fn aad_for(&self, id: &str) -> Vec<u8> {
        self.aad
            .replace("{table}", &self.table)
            .replace("{column}", &self.column)
            .replace("{id}", id)
            .into_bytes()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TargetsFile {
    format: String,
    version: u32,
    targets: Vec<Target>,
}

const TARGETS_FORMAT: &str = "keyferry-rewrap-targets";

/// The targets kept in the home.
pub fn targets(home: &Home) -> Result<Vec<Target>> {
    let path = home.root().join(TARGETS_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()))(e)),
    };
    let file: TargetsFile = serde_json::from_slice(&text).map_err(|e| {
        Error::Refused(format!(
            "{} is damaged ({e}); restore it from {}",
            path.display(),
            home.backup_dir().display()
        ))
    })?;
    if file.format != TARGETS_FORMAT || file.version != 1 {
        return Err(Error::Refused(format!(
            "{} is not a keyferry rewrap target list of version 1",
            path.display()
        )));
    }
    Ok(file.targets)
}

/// Checks a target's names and DSN before it is used or stored.
pub fn check_target(t: &Target) -> Result<()> {
    Dsn::parse(&t.dsn).map_err(|e| Error::Usage(format!("--dsn: {e}")))?;
    for (what, name) in [
        ("--table", &t.table),
        ("--column", &t.column),
        ("--id-column", &t.id_column),
    ] {
        if name.is_empty() || name.contains('\0') || name.split('.').any(str::is_empty) {
            return Err(Error::Usage(format!("{what} {name:?} is not a valid name")));
        }
    }
    if t.column.contains('.') || t.id_column.contains('.') {
        return Err(Error::Usage(
            "--column and --id-column are column names, without a table".into(),
        ));
    }
    Ok(())
}

/// `keyferry rewrap add-target` / `remove-target`: rewrites the home's
/// target list as an audited, journaled change.
pub fn set_target(home: &Home, target: Target, remove: bool) -> Result<Vec<Target>> {
    check_target(&target)?;
    let mut node = home.open(false)?;
    node.require_keystore()?;
    let mut list = targets(home)?;
    let same =
        |t: &Target| t.dsn == target.dsn && t.table == target.table && t.column == target.column;
    let existed = list.iter().any(same);
    list.retain(|t| !same(t));
    if remove {
        if !existed {
            return Err(Error::Usage(format!(
                "no rewrap target {} on {}: `keyferry rewrap targets` lists them",
                target.name(),
                target.dsn
            )));
        }
    } else {
        list.push(target.clone());
    }
    let file = TargetsFile {
        format: TARGETS_FORMAT.into(),
        version: 1,
        targets: list.clone(),
    };
    let mut text = serde_json::to_vec_pretty(&file)
        .map_err(|e| Error::Refused(format!("cannot render the target list: {e}")))?;
    text.push(b'\n');
    let action = if remove {
        "rewrap-remove-target"
    } else {
        "rewrap-add-target"
    };
    let mut change = node.begin(
        action,
        details([
            ("dsn", Value::from(target.dsn.clone())),
            ("target", Value::from(target.name())),
        ]),
    )?;
    change.replace_file(
        &home.root().join(TARGETS_FILE),
        &mut &text[..],
        Ownership::OwnerOnly,
    )?;
    change.finish()?;
    Ok(list)
}

/// How a column stores envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Text,
    Raw,
}

/// A target resolved against its database: quoted names and types.
struct Resolved {
    table: String,
    column: String,
    id: String,
    id_type: String,
    form: Form,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_table(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

fn pg(dsn: &Dsn) -> impl Fn(postgres::Error) -> Error + '_ {
    move |e| Error::Pg(crate::pg::from_postgres(&dsn.target(), e))
}

fn resolve(client: &mut Client, dsn: &Dsn, t: &Target) -> Result<Resolved> {
    let table = quote_table(&t.table);
    let type_of = |client: &mut Client, column: &str| -> Result<Option<(String, String)>> {
        let row = client
            .query_opt(
                "SELECT format_type(a.atttypid, a.atttypmod), ty.typname::text \
                 FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped",
                &[&table, &column],
            )
            .map_err(pg(dsn))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    };
    let missing = |what: &str, name: &str| {
        Error::Usage(format!(
            "{} has no {what} {name:?} (or the table does not exist, or this user cannot see it): check --table, --column and --id-column",
            dsn.target()
        ))
    };
    let (_, value_type) =
        type_of(client, &t.column)?.ok_or_else(|| missing("column", &t.column))?;
    let form = match value_type.as_str() {
        "text" | "varchar" | "bpchar" => Form::Text,
        "bytea" => Form::Raw,
        other => {
            return Err(Error::Usage(format!(
            "column {} is of type {other}: envelopes are stored in text (kfe1:…) or bytea columns",
            t.name()
        )))
        }
    };
    let (id_type, _) =
        type_of(client, &t.id_column)?.ok_or_else(|| missing("id column", &t.id_column))?;
    Ok(Resolved {
        table,
        column: quote_ident(&t.column),
        id: quote_ident(&t.id_column),
        id_type,
        form,
    })
}

impl Resolved {
    /// SQL giving the key id of the column's value without decrypting it
    /// (NULL when the value is not an envelope the reader would take).
    fn key_id_sql(&self) -> String {
        let c = &self.column;
        match self.form {
            Form::Text => envelope::text_key_id_sql(c),
            Form::Raw => format!(
                "(CASE WHEN length({c}) >= {} AND get_byte({c}, 0) = {} \
                 THEN ('x' || encode(substring({c} from 2 for 4), 'hex'))::bit(32)::bigint END)",
                envelope::OVERHEAD,
                envelope::FORMAT_V1
            ),
        }
    }

    fn array_type(&self) -> &'static str {
        match self.form {
            Form::Text => "text[]",
            Form::Raw => "bytea[]",
        }
    }
}

/// Values per key version in one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetCensus {
    pub target: String,
    pub dsn: String,
    pub by_key: BTreeMap<u32, u64>,
    /// Not an envelope, under a key this node cannot open (unknown,
    /// disabled, destroyed), or (with `--verify`) failing to open.
    pub undecryptable: u64,
    /// With `--verify`: ids of the values that did not open (the first 100).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_ids: Vec<String>,
}

/// The census of every target, summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Census {
    pub by_key: BTreeMap<u32, u64>,
    pub undecryptable: u64,
    pub targets: Vec<TargetCensus>,
    /// How long the census took, milliseconds.
    pub elapsed_ms: u64,
}

impl Census {
    /// Values sealed under `key`.
    pub fn under(&self, key: u32) -> u64 {
        self.by_key.get(&key).copied().unwrap_or(0)
    }
}

/// The password for a target's DSN, when the operator gave one.
pub type Password<'a> = Option<&'a [u8]>;

/// `keyferry rewrap --check` (and `--verify`): values per key version.
pub fn census(home: &Home, targets: &[Target], verify: bool, password: Password) -> Result<Census> {
    let keyring = home.load_keystore()?.keyring;
    let start = Instant::now();
    let mut out = Census::default();
    for t in targets {
        let c = census_one(&keyring, t, verify, password)?;
        for (k, n) in &c.by_key {
            *out.by_key.entry(*k).or_default() += n;
        }
        out.undecryptable += c.undecryptable;
        out.targets.push(c);
    }
    out.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(out)
}

fn census_one(
    keyring: &Keyring,
    t: &Target,
    verify: bool,
    password: Password,
) -> Result<TargetCensus> {
    check_target(t)?;
    let dsn = Dsn::parse(&t.dsn).map_err(|e| Error::Usage(e.to_string()))?;
    let mut client = dsn.connect(password)?;
    let r = resolve(&mut client, &dsn, t)?;
    let mut out = TargetCensus {
        target: t.name(),
        dsn: t.dsn.clone(),
        ..Default::default()
    };
    let sql = format!(
        "SELECT {kid}, count(*)::bigint FROM {table} WHERE {c} IS NOT NULL GROUP BY 1",
        kid = r.key_id_sql(),
        table = r.table,
        c = r.column
    );
    for row in client.query(&sql, &[]).map_err(pg(&dsn))? {
        let kid: Option<i64> = row.get(0);
        let n: i64 = row.get(1);
        match kid.and_then(|k| u32::try_from(k).ok()) {
            Some(k) => {
                out.by_key.insert(k, n as u64);
                let usable = keyring
                    .key(k)
                    .is_some_and(|key| key.status == KeyStatus::Enabled);
                if !usable {
                    out.undecryptable += n as u64;
                }
            }
            None => out.undecryptable += n as u64,
        }
    }
    if verify {
        out.undecryptable = 0;
        out.failed_ids.clear();
        let sql = format!(
            "SELECT {id}::text, {c} FROM {table} WHERE {c} IS NOT NULL",
            id = r.id,
            c = r.column,
            table = r.table
        );
        let mut tx = client.transaction().map_err(pg(&dsn))?;
        let portal = tx.bind(&sql, &[]).map_err(pg(&dsn))?;
        loop {
            let rows = tx.query_portal(&portal, 5000).map_err(pg(&dsn))?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let id: String = row.get(0);
                if open_value(keyring, t, &r, &row, &id).is_err() {
                    out.undecryptable += 1;
                    if out.failed_ids.len() < 100 {
                        out.failed_ids.push(id);
                    }
                }
            }
        }
        tx.commit().map_err(pg(&dsn))?;
    }
    Ok(out)
}

/// Opens column 1 of `row` (the value) with `keyring`.
fn open_value(
    keyring: &Keyring,
    t: &Target,
    r: &Resolved,
    row: &postgres::Row,
    id: &str,
) -> std::result::Result<zeroize::Zeroizing<Vec<u8>>, EnvelopeError> {
    let aad = t.aad_for(id);
    match r.form {
        Form::Text => {
            let v: String = row.get(1);
            keyring.decrypt_text(&v, &aad)
        }
        Form::Raw => {
            let v: Vec<u8> = row.get(1);
            keyring.decrypt(&v, &aad)
        }
    }
}

/// Options of a rewrap run.
#[derive(Debug, Clone, Copy)]
pub struct RewrapOptions {
    pub batch: usize,
    /// Pause while a replica's replay lag is above this many bytes.
    pub max_lag: Option<u64>,
}

impl Default for RewrapOptions {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
            max_lag: None,
        }
    }
}

/// Counts of one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub dsn: String,
    /// Replaced by an envelope under the primary.
    pub rewrapped: u64,
    /// Changed by the application between read and write: left as they are.
    pub changed_meanwhile: u64,
    /// Could not be opened: left untouched.
    pub failed: u64,
    pub resumed: bool,
    pub batches: u64,
    /// Time spent waiting for a replica (--max-lag), milliseconds.
    pub paused_ms: u64,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RewrapReport {
    pub primary: u32,
    pub targets: Vec<TargetReport>,
}

impl RewrapReport {
    pub fn failed(&self) -> u64 {
        self.targets.iter().map(|t| t.failed).sum()
    }
    pub fn rewrapped(&self) -> u64 {
        self.targets.iter().map(|t| t.rewrapped).sum()
    }
}

/// `keyferry rewrap`: every target in turn. Fails with
/// [`Error::Undecryptable`] after finishing when values could not be
/// opened (the report of what was done is then in `on_report`).
pub fn rewrap(
    home: &Home,
    targets: &[Target],
    opts: RewrapOptions,
    password: Password,
    obs: &mut dyn Observer,
    on_report: &mut dyn FnMut(&RewrapReport),
) -> Result<RewrapReport> {
    if targets.is_empty() {
        return Err(Error::Usage(
            "no rewrap targets: give --dsn, --table and --column, or keep targets in the home with `keyferry rewrap add-target`".into(),
        ));
    }
    for t in targets {
        check_target(t)?;
    }
    if opts.batch == 0 {
        return Err(Error::Usage("--batch must be at least 1".into()));
    }
    let mut node = home.open(false)?;
    let keyring = node.require_keystore()?.keyring.clone();
    let mut report = RewrapReport {
        primary: keyring.primary(),
        targets: Vec::new(),
    };
    let names: Vec<String> = targets
        .iter()
        .map(|t| format!("{} {}", t.dsn, t.name()))
        .collect();
    let mut change = node.begin(
        "rewrap",
        details([
            ("primary", Value::from(keyring.primary())),
            ("targets", Value::from(names)),
        ]),
    )?;
    let result = change.irreversible("rewrapping stored values", Vec::new(), |progress| {
        for t in targets {
            let r = rewrap_one(&keyring, t, opts, password, obs);
            let tr = match r {
                Ok(tr) => tr,
                Err(failed) => {
                    let (tr, e) = *failed;
                    report.targets.push(tr);
                    record_counts(progress, &report);
                    return Err(e);
                }
            };
            report.targets.push(tr);
            record_counts(progress, &report);
        }
        Ok(())
    });
    on_report(&report);
    result?;
    change.finish()?;
    if report.failed() > 0 {
        return Err(Error::Undecryptable {
            failed: report.failed(),
        });
    }
    Ok(report)
}

fn record_counts(progress: &mut crate::node::Progress, report: &RewrapReport) {
    let sum = |f: fn(&TargetReport) -> u64| report.targets.iter().map(f).sum::<u64>();
    progress.set("rewrapped", sum(|t| t.rewrapped));
    progress.set("changed_meanwhile", sum(|t| t.changed_meanwhile));
    progress.set("failed", sum(|t| t.failed));
    progress.set("targets_done", report.targets.len());
}

type Failed = Box<(TargetReport, Error)>;

fn rewrap_one(
    keyring: &Keyring,
    t: &Target,
    opts: RewrapOptions,
    password: Password,
    obs: &mut dyn Observer,
) -> std::result::Result<TargetReport, Failed> {
    let start = Instant::now();
    let mut report = TargetReport {
        target: t.name(),
        dsn: t.dsn.clone(),
        ..Default::default()
    };
    let result = run_target(keyring, t, opts, password, obs, &mut report);
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    match result {
        Ok(()) => Ok(report),
        Err(e) => Err(Box::new((report, e))),
    }
}

fn run_target(
    keyring: &Keyring,
    t: &Target,
    opts: RewrapOptions,
    password: Password,
    obs: &mut dyn Observer,
    report: &mut TargetReport,
) -> Result<()> {
    let dsn = Dsn::parse(&t.dsn).map_err(|e| Error::Usage(e.to_string()))?;
    let mut client = dsn.connect(password)?;
    let r = resolve(&mut client, &dsn, t)?;
    let primary = i64::from(keyring.primary());
    let name = t.name();
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (\
               target text PRIMARY KEY, to_key bigint NOT NULL, last_id text, \
               rewrapped bigint NOT NULL DEFAULT 0, changed bigint NOT NULL DEFAULT 0, \
               failed bigint NOT NULL DEFAULT 0, updated timestamptz NOT NULL DEFAULT now())"
        ))
        .map_err(pg(&dsn))?;
    // The cursor of an interrupted run towards the same primary.
    let cursor_row = client
        .query_opt(
            &format!("SELECT to_key, last_id FROM {PROGRESS_TABLE} WHERE target = $1"),
            &[&name],
        )
        .map_err(pg(&dsn))?;
    let cursor: Option<String> = match cursor_row {
        Some(row) if row.get::<_, i64>(0) == primary => row.get(1),
        _ => None,
    };
    report.resumed = cursor.is_some();
    let kid = r.key_id_sql();
    let remaining_sql = format!(
        "SELECT count(*)::bigint FROM {table} WHERE {c} IS NOT NULL AND {kid} IS DISTINCT FROM $1 \
         AND ($2::text IS NULL OR {id} > $2::text::{idt})",
        table = r.table,
        c = r.column,
        id = r.id,
        idt = r.id_type
    );
    let total: i64 = client
        .query_one(&remaining_sql, &[&primary, &cursor])
        .map_err(pg(&dsn))?
        .get(0);
    let total = total as u64;
    let label = if report.resumed {
        format!("{name} (resumed)")
    } else {
        name.clone()
    };
    obs.work(
        &label,
        &format!("{label}: {total} value(s) not under the primary"),
        Unit::Rows,
    );
    obs.progress(0, total);
    let select_first = format!(
        "SELECT t.{id}::text AS kf_id, t.{c} AS kf_value FROM {table} AS t \
         WHERE t.{c} IS NOT NULL AND {kid} IS DISTINCT FROM $1 ORDER BY t.{id} LIMIT $2",
        id = r.id,
        c = r.column,
        table = r.table
    );
    let select_next = format!(
        "SELECT t.{id}::text AS kf_id, t.{c} AS kf_value FROM {table} AS t \
         WHERE t.{id} > $3::text::{idt} AND t.{c} IS NOT NULL \
         AND {kid} IS DISTINCT FROM $1 ORDER BY t.{id} LIMIT $2",
        id = r.id,
        c = r.column,
        table = r.table,
        idt = r.id_type
    );
    let update = client
        .prepare(&format!(
            "UPDATE {table} AS t SET {c} = v.new \
             FROM unnest($1::text[], $2::{arr}, $3::{arr}) AS v(id, old, new) \
             WHERE t.{id} = v.id::{idt} AND t.{c} = v.old",
            table = r.table,
            c = r.column,
            id = r.id,
            idt = r.id_type,
            arr = r.array_type()
        ))
        .map_err(pg(&dsn))?;
    let save = client
        .prepare(&format!(
            "INSERT INTO {PROGRESS_TABLE} AS p (target, to_key, last_id, rewrapped, changed, failed) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (target) DO UPDATE SET \
             to_key = $2, last_id = $3, rewrapped = p.rewrapped + $4, changed = p.changed + $5, \
             failed = p.failed + $6, updated = now()"
        ))
        .map_err(pg(&dsn))?;
    let limit = opts.batch as i64;
    let mut done = 0u64;
    let mut phases = Phases::default();
    // Three stages run at once, handing batches on through bounded
    // channels: a reader (its own connection, one autocommit SELECT per
    // batch, keyset by id), the crypto (open, seal under the primary) and
    // the writer (this connection: the compare-and-set UPDATE and the
    // cursor, one transaction per batch). The reader's snapshot may be
    // older than the writer's: the compare-and-set is what decides, so a
    // value changed since it was read is left as it is.
    let mut reader_client = dsn.connect(password)?;
    let first = reader_client.prepare(&select_first).map_err(pg(&dsn))?;
    let next = reader_client.prepare(&select_next).map_err(pg(&dsn))?;
    let start_cursor = cursor.clone();
    std::thread::scope(|scope| -> Result<()> {
        let (read_tx, read_rx) = std::sync::mpsc::sync_channel::<Result<Vec<postgres::Row>>>(1);
        let (sealed_tx, sealed_rx) = std::sync::mpsc::sync_channel::<Result<Sealed>>(1);
        let dsn_r = &dsn;
        scope.spawn(move || {
            let mut cursor = start_cursor;
            loop {
                let rows = match &cursor {
                    None => reader_client.query(&first, &[&primary, &limit]),
                    Some(c) => reader_client.query(&next, &[&primary, &limit, c]),
                }
                .map_err(pg(dsn_r));
                let stop = match &rows {
                    Ok(rows) if rows.is_empty() => true,
                    Ok(rows) => {
                        cursor = Some(rows.last().expect("not empty").get(0));
                        (rows.len() as i64) < limit
                    }
                    Err(_) => true,
                };
                let empty = matches!(&rows, Ok(r) if r.is_empty());
                if empty || read_tx.send(rows).is_err() || stop {
                    break;
                }
            }
        });
        let r_ref = &r;
        scope.spawn(move || {
            for rows in read_rx {
                let sealed = rows.and_then(|rows| seal_batch(keyring, t, r_ref, &rows));
                if sealed_tx.send(sealed).is_err() {
                    break;
                }
            }
        });
        for sealed in sealed_rx {
            let b = sealed?;
            if let Some(max) = opts.max_lag {
                let paused = wait_for_lag(&mut client, &dsn, max, obs)?;
                report.paused_ms += paused.as_millis() as u64;
            }
            for (id, error) in &b.failures {
                obs.note(&format!(
                    "{name} id {}: left untouched: {error}",
                    crate::fmt::printable(id)
                ));
            }
            let t2 = Instant::now();
            let mut tx = client.transaction().map_err(pg(&dsn))?;
            // A batch lost to a crash is rolled back with its cursor and
            // done again: its commit need not wait for the WAL flush.
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .map_err(pg(&dsn))?;
            let (old, new): (&(dyn ToSql + Sync), &(dyn ToSql + Sync)) = match r.form {
                Form::Text => (&b.old_t, &b.new_t),
                Form::Raw => (&b.old_b, &b.new_b),
            };
            let updated = if b.ids.is_empty() {
                0
            } else {
                tx.execute(&update, &[&b.ids, old, new]).map_err(pg(&dsn))?
            } as i64;
            let t3 = Instant::now();
            phases.update += t3 - t2;
            let changed = b.ids.len() as i64 - updated;
            let failed = b.failures.len() as i64;
            tx.execute(
                &save,
                &[&name, &primary, &b.last, &updated, &changed, &failed],
            )
            .map_err(pg(&dsn))?;
            tx.commit().map_err(pg(&dsn))?;
            phases.commit += t3.elapsed();
            phases.crypto += b.crypto;
            report.batches += 1;
            report.rewrapped += updated as u64;
            report.changed_meanwhile += changed as u64;
            report.failed += failed as u64;
            done += b.rows;
            obs.progress(done, total);
        }
        Ok(())
    })?;
    tracing::debug!(
        target = %name,
        crypto_ms = phases.crypto.as_millis() as u64,
        update_ms = phases.update.as_millis() as u64,
        cursor_and_commit_ms = phases.commit.as_millis() as u64,
        "rewrap: where the time went (crypto overlaps the writes)"
    );
    // Finished: the next run starts from the first row.
    client
        .execute(
            &format!("DELETE FROM {PROGRESS_TABLE} WHERE target = $1"),
            &[&name],
        )
        .map_err(pg(&dsn))?;
    obs.finished();
    Ok(())
}

/// One batch, opened and sealed again, ready for the writer.
struct Sealed {
    ids: Vec<String>,
    old_t: Vec<String>,
    new_t: Vec<String>,
    old_b: Vec<Vec<u8>>,
    new_b: Vec<Vec<u8>>,
    /// Values that could not be opened: id and why.
    failures: Vec<(String, String)>,
    /// The batch's last id (the cursor once it commits).
    last: String,
    rows: u64,
    crypto: Duration,
}

/// Opens every value of a batch and seals it under the primary.
fn seal_batch(
    keyring: &Keyring,
    t: &Target,
    r: &Resolved,
    rows: &[postgres::Row],
) -> Result<Sealed> {
    let start = Instant::now();
    let mut b = Sealed {
        ids: Vec::with_capacity(rows.len()),
        old_t: Vec::new(),
        new_t: Vec::new(),
        old_b: Vec::new(),
        new_b: Vec::new(),
        failures: Vec::new(),
        last: rows.last().map(|r| r.get(0)).unwrap_or_default(),
        rows: rows.len() as u64,
        crypto: Duration::ZERO,
    };
    for row in rows {
        let id: String = row.get(0);
        let plain = match open_value(keyring, t, r, row, &id) {
            Ok(p) => p,
            Err(e) => {
                b.failures.push((id, e.to_string()));
                continue;
            }
        };
        let aad = t.aad_for(&id);
        match r.form {
            Form::Text => {
                b.new_t.push(keyring.encrypt_text(&plain, &aad)?);
                b.old_t.push(row.get::<_, String>(1));
            }
            Form::Raw => {
                b.new_b.push(keyring.encrypt(&plain, &aad)?);
                b.old_b.push(row.get::<_, Vec<u8>>(1));
            }
        }
        b.ids.push(id);
    }
    b.crypto = start.elapsed();
    Ok(b)
}

/// Time spent per phase of the batches, for `-vv`.
#[derive(Default)]
struct Phases {
    crypto: Duration,
    update: Duration,
    commit: Duration,
}

/// Waits while the largest replay lag among the server's replicas is above
/// `max` bytes. Returns the time waited.
fn wait_for_lag(
    client: &mut Client,
    dsn: &Dsn,
    max: u64,
    obs: &mut dyn Observer,
) -> Result<Duration> {
    let start = Instant::now();
    let mut noted = false;
    loop {
        let lag: i64 = client
            .query_one(
                "SELECT COALESCE(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::bigint \
                 FROM pg_stat_replication",
                &[],
            )
            .map_err(pg(dsn))?
            .get(0);
        if lag <= max as i64 {
            return Ok(start.elapsed());
        }
        if !noted {
            noted = true;
            obs.note(&format!(
                "paused: the replica is {} behind",
                crate::fmt::human_bytes(lag as u64)
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The census guard of `disable` and `destroy`: refuses while the home's
/// rewrap targets hold values under the key.
pub struct CensusGuard<'a> {
    pub password: Password<'a>,
}

impl Guard for CensusGuard<'_> {
    fn check(&self, home: &Home, action: &str, key: u32) -> Result<GuardFinding> {
        let list = targets(home)?;
        if list.is_empty() {
            return Ok(None);
        }
        let census = match census(home, &list, false, self.password) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Some(format!(
                    "the census of the home's rewrap targets could not be taken ({e}), so it is unknown whether values are still sealed under key {key}"
                )))
            }
        };
        let n = census.under(key);
        if n == 0 {
            // A value the census cannot place under a key may be sealed
            // under this one: the census is clean or the key stays.
            if census.undecryptable == 0 {
                return Ok(None);
            }
            let where_: Vec<String> = census
                .targets
                .iter()
                .filter(|t| t.undecryptable > 0)
                .map(|t| format!("{} in {} ({})", t.undecryptable, t.target, t.dsn))
                .collect();
            return Ok(Some(format!(
                "{} stored value(s) cannot be opened by this node or are not keyferry envelopes as docs/envelope.md writes them: {}; which key sealed them is unknown, so they may be under key {key}. `keyferry rewrap --verify` lists them by id: correct or remove them, then {action} key {key} (with --force, any of them under key {key} become unreadable)",
                census.undecryptable,
                where_.join(", ")
            )));
        }
        let where_: Vec<String> = census
            .targets
            .iter()
            .filter(|t| t.by_key.get(&key).is_some_and(|n| *n > 0))
            .map(|t| format!("{} in {} ({})", t.by_key[&key], t.target, t.dsn))
            .collect();
        Ok(Some(format!(
            "{n} stored value(s) are still sealed under key {key}: {}; run `keyferry rewrap`, then `keyferry rewrap --check`, then {action} key {key} (with --force, those {n} values become unreadable)",
            where_.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_the_aad_template_filled() {
        assert_eq!(quote_table("app.cred\"s"), "\"app\".\"cred\"\"s\"");
        let t = Target {
            dsn: "host=db user=app".into(),
            table: "app.credentials".into(),
            column: "secret".into(),
            id_column: "id".into(),
            aad: "{table}:{id}".into(),
        };
        assert_eq!(t.aad_for("42"), b"app.credentials:42");
        check_target(&t).unwrap();
        let bad = Target {
            table: "app..x".into(),
            ..t.clone()
        };
        assert!(check_target(&bad).is_err());
        let pw = Target {
            dsn: "host=db user=app password=x".into(),
            ..t
        };
        assert!(matches!(check_target(&pw), Err(Error::Usage(m)) if m.contains("password file")));
    }
}
