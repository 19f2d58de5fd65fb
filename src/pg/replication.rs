//! A physical replication connection, just far enough to prove it works:
//! the startup with `replication=true`, authentication (SCRAM-SHA-256, MD5
//! or clear text, as the server asks), `IDENTIFY_SYSTEM`, then goodbye.
//!
//! The `postgres` crate cannot open such a connection (it has no
//! `replication` startup parameter), and a normal SQL connection would be
//! matched by the `host all all` line of `pg_hba.conf` instead of the
//! `host replication` line a standby needs, so it would prove the wrong
//! thing. This speaks the wire protocol with `postgres-protocol`, the same
//! message codec and SCRAM implementation the `postgres` crate uses, over a
//! plain TCP connection with timeouts. TLS is not offered (like the
//! `postgres` crate with `NoTls`); a server that requires it refuses with
//! its own message.
//!
//! The password is borrowed for the length of the call and is written only
//! into the authentication messages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};

use super::{one_line, PgError};

/// Longest backend message accepted (the handshake's are tiny).
const MAX_MESSAGE_LEN: usize = 1 << 20;
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// The server's current timeline and that timeline's history file (`None`
/// on timeline 1, which has none), read over a replication connection as
/// `TIMELINE_HISTORY` (the replication user may run it; reading the file
/// with SQL would need a superuser). `timeout` bounds every read.
pub fn timeline_history(
    addr: SocketAddr,
    user: &str,
    password: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u32, Option<String>), PgError> {
    let mut conn = Conn::open(addr, timeout)?;
    conn.startup(user, password)?;
    let (_, timeline, _) = conn.identify_system()?;
    let timeline: u32 = timeline
        .parse()
        .map_err(|_| conn.protocol(format!("IDENTIFY_SYSTEM returned timeline {timeline:?}")))?;
    if timeline <= 1 {
        conn.terminate();
        return Ok((timeline, None));
    }
    let row = conn.query_row(&format!("TIMELINE_HISTORY {timeline}"))?;
    conn.terminate();
    let content = row
        .get(1)
        .cloned()
        .flatten()
        .ok_or_else(|| conn.protocol("TIMELINE_HISTORY returned no content".into()))?;
    Ok((timeline, Some(content)))
}

/// What `IDENTIFY_SYSTEM` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (the same on a primary and its
    /// replicas).
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush location, e.g. `0/3000148`.
    pub xlogpos: String,
    /// `server_version` from the startup parameters, if sent.
    pub server_version: Option<String>,
}

/// Opens a physical replication connection to `addr` as `user` and runs
/// `IDENTIFY_SYSTEM`. `timeout` bounds the connect and every read and write.
pub fn identify_system(
    addr: SocketAddr,
    user: &str,
    password: Option<&[u8]>,
    timeout: Duration,
) -> Result<SystemIdentity, PgError> {
    let mut conn = Conn::open(addr, timeout)?;
    let server_version = conn.startup(user, password)?;
    let (system_id, timeline, xlogpos) = conn.identify_system()?;
    conn.terminate();
    Ok(SystemIdentity {
        system_id,
        timeline: timeline.parse().map_err(|_| {
            conn.protocol(format!("IDENTIFY_SYSTEM returned timeline {timeline:?}"))
        })?,
        xlogpos,
        server_version,
    })
}

struct Conn {
    stream: TcpStream,
    target: String,
    /// Each read's and write's bound.
    timeout: Duration,
}

impl Conn {
    /// A TCP connection to `addr` whose connect, reads and writes are each
    /// bounded by `timeout`.
    fn open(addr: SocketAddr, timeout: Duration) -> Result<Conn, PgError> {
        let target = addr.to_string();
        let unreachable = |source| PgError::Unreachable {
            target: target.clone(),
            source,
        };
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(unreachable)?;
        Ok(Conn {
            stream,
            target,
            timeout,
        })
    }

    fn protocol(&self, message: String) -> PgError {
        PgError::Protocol {
            target: self.target.clone(),
            message,
        }
    }

    fn io(&self, e: std::io::Error) -> PgError {
        // A read that timed out: the server accepted and then said nothing.
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return PgError::Silent {
                target: self.target.clone(),
                ms: self.timeout.as_millis(),
            };
        }
        self.protocol(format!("connection failed during the handshake: {e}"))
    }

    fn send(&mut self, buf: &BytesMut) -> Result<(), PgError> {
        self.stream.write_all(buf).map_err(|e| self.io(e))
    }

    fn encode(&self, r: std::io::Result<()>) -> Result<(), PgError> {
        r.map_err(|e| self.protocol(format!("cannot encode a message: {e}")))
    }

    /// Reads one whole backend message.
    fn receive(&mut self) -> Result<backend::Message, PgError> {
        let mut header = [0u8; 5];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| self.io(e))?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(self.protocol(format!(
                "the answer is not PostgreSQL's protocol (message length {len}): is another service on that port?"
            )));
        }
        let mut buf = BytesMut::zeroed(1 + len);
        buf[..5].copy_from_slice(&header);
        self.stream
            .read_exact(&mut buf[5..])
            .map_err(|e| self.io(e))?;
        match backend::Message::parse(&mut buf) {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(self.protocol("incomplete message".into())),
            Err(e) => Err(self.protocol(format!("malformed message: {e}"))),
        }
    }

    fn server_error(&self, body: &backend::ErrorResponseBody) -> PgError {
        let mut code = String::new();
        let mut parts = Vec::new();
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'C' => code = value,
                b'M' => parts.insert(0, value),
                b'D' => parts.push(value),
                b'H' => parts.push(format!("hint: {value}")),
                _ => {}
            }
        }
        PgError::Server {
            target: self.target.clone(),
            code,
            message: one_line(&parts.join("; ")),
        }
    }

    /// Startup and authentication, up to the first ReadyForQuery. Returns
    /// the server's `server_version` parameter.
    fn startup(&mut self, user: &str, password: Option<&[u8]>) -> Result<Option<String>, PgError> {
        let mut buf = BytesMut::new();
        let params = [
            ("user", user),
            ("replication", "true"),
            ("application_name", super::APPLICATION_NAME),
        ];
        let r = frontend::startup_message(params.iter().copied(), &mut buf);
        self.encode(r)?;
        self.send(&buf)?;
        let need_password = |conn: &Conn| {
            password.ok_or_else(|| {
                conn.protocol(
                    "the server asks for a password and none was given; give a password source"
                        .into(),
                )
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        let mut server_version = None;
        loop {
            buf.clear();
            match self.receive()? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let r = frontend::password_message(need_password(self)?, &mut buf);
                    self.encode(r)?;
                    self.send(&buf)?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), need_password(self)?, body.salt());
                    let r = frontend::password_message(hash.as_bytes(), &mut buf);
                    self.encode(r)?;
                    self.send(&buf)?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Ok(Some(m)) = mechanisms.next() {
                        offered |= m == SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(self.protocol(
                            "the server offers no SASL mechanism keyferry speaks (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    let s = sasl::ScramSha256::new(
                        need_password(self)?,
                        sasl::ChannelBinding::unsupported(),
                    );
                    let r = frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf);
                    self.encode(r)?;
                    self.send(&buf)?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let Some(s) = scram.as_mut() else {
                        return Err(self.protocol("SASL continue without a start".into()));
                    };
                    s.update(body.data()).map_err(|e| PgError::Protocol {
                        target: self.target.clone(),
                        message: format!("SCRAM exchange failed: {e}"),
                    })?;
                    let r = frontend::sasl_response(s.message(), &mut buf);
                    self.encode(r)?;
                    self.send(&buf)?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let Some(s) = scram.as_mut() else {
                        return Err(self.protocol("SASL final without a start".into()));
                    };
                    s.finish(body.data()).map_err(|e| PgError::Protocol {
                        target: self.target.clone(),
                        message: format!("the server's SCRAM proof is wrong: {e}"),
                    })?;
                }
                backend::Message::ParameterStatus(body) => {
                    if body.name().ok() == Some("server_version") {
                        server_version = body.value().ok().map(str::to_owned);
                    }
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(server_version),
                backend::Message::ErrorResponse(body) => return Err(self.server_error(&body)),
                _ => {
                    return Err(self.protocol(
                        "the server asked for an authentication method keyferry does not speak \
                         (use scram-sha-256 or md5 in pg_hba.conf)"
                            .into(),
                    ))
                }
            }
        }
    }

    /// Sends `IDENTIFY_SYSTEM`; returns (systemid, timeline, xlogpos).
    fn identify_system(&mut self) -> Result<(String, String, String), PgError> {
        let values = self.query_row("IDENTIFY_SYSTEM")?;
        let get = |i: usize| values.get(i).cloned().flatten().unwrap_or_default();
        Ok((get(0), get(1), get(2)))
    }

    /// Sends one replication command that answers one row; returns its
    /// values as text (raw bytes read as UTF-8, lossily).
    fn query_row(&mut self, command: &str) -> Result<Vec<Option<String>>, PgError> {
        let mut buf = BytesMut::new();
        let r = frontend::query(command, &mut buf);
        self.encode(r)?;
        self.send(&buf)?;
        let mut row: Option<Vec<Option<String>>> = None;
        let mut error = None;
        loop {
            match self.receive()? {
                backend::Message::DataRow(body) => {
                    let data = body.buffer();
                    let mut values = Vec::new();
                    let mut ranges = body.ranges();
                    while let Ok(Some(range)) = ranges.next() {
                        values.push(range.map(|r| String::from_utf8_lossy(&data[r]).into_owned()));
                    }
                    row = Some(values);
                }
                backend::Message::ErrorResponse(body) => error = Some(self.server_error(&body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        row.ok_or_else(|| self.protocol(format!("{command} returned no row")))
    }

    fn terminate(&mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.stream.write_all(&buf);
    }
}
