//! JetStream over a [`Connection`]: stream state and creation, publishing
//! with acknowledgements, and [`StreamReader`], which reads one stream in
//! sequence order from a given sequence through an ephemeral pull consumer
//! (no acks: the reader's position is kept by whoever appends what it
//! reads, so a restart asks for the next sequence again).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{Connection, NatsError, NatsErrorKind};

const REQUEST_SID: u64 = 1;
const DELIVER_SID: u64 = 2;
/// Messages asked for by one pull request.
pub const PULL_BATCH_MESSAGES: u32 = 16_384;
/// How long a pull request waits on the server for messages.
const PULL_EXPIRES_MS: u64 = 1000;
/// How long a reader with pulls outstanding waits without any answer to
/// them (a message, or the end of an expired pull) before it calls the
/// server unresponsive: a server that accepts connections but answers
/// nothing (stopped, or wedged) must not keep a source waiting silently.
pub const PULL_SILENCE_LIMIT_MS: u64 = 10 * PULL_EXPIRES_MS;
/// How long an abandoned consumer (its reader was killed) lives on.
const CONSUMER_INACTIVE_MS: u64 = 30_000;

/// The sequences a stream holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// The first sequence still stored (1 when nothing was ever removed).
    pub first_seq: u64,
    /// The last sequence stored (0 when empty).
    pub last_seq: u64,
}

/// A connection with a reply inbox for JetStream API requests.
pub struct JetStream {
    conn: Connection,
    inbox: String,
    next_request: u64,
    timeout: Duration,
}

impl JetStream {
    /// Connects to `server` (`host:port`); `timeout` bounds the connection
    /// and every API request.
    pub fn connect(server: &str, timeout: Duration) -> Result<Self, NatsError> {
        let mut conn = Connection::connect(server, timeout)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let inbox = format!("_INBOX.weir{:x}{:x}", std::process::id(), nanos);
        conn.subscribe(&format!("{inbox}.r.*"), REQUEST_SID);
        Ok(Self {
            conn,
            inbox,
            next_request: 0,
            timeout,
        })
    }

    /// The server, `host:port`.
    pub fn server(&self) -> &str {
        self.conn.server()
    }

    /// Sends `payload` to `subject` and returns the JSON reply; an `error`
    /// member in it is an [`NatsErrorKind::Api`] error.
    pub fn request(&mut self, subject: &str, payload: &[u8]) -> Result<Value, NatsError> {
        self.next_request += 1;
        let reply = format!("{}.r.{}", self.inbox, self.next_request);
        self.conn.publish(subject, Some(&reply), payload)?;
        let deadline = Instant::now() + self.timeout;
        let mut others = Vec::new();
        let answer = loop {
            match self.conn.next_message(deadline)? {
                Some(m) if m.sid == REQUEST_SID && m.subject == reply => break m,
                // A late answer to an earlier, timed-out request.
                Some(m) if m.sid == REQUEST_SID => {}
                Some(m) => others.push(m),
                None => {
                    return Err(self.conn.error(NatsErrorKind::Timeout {
                        what: subject.to_owned(),
                        timeout_ms: super::duration_ms(self.timeout),
                    }))
                }
            }
        };
        for m in others {
            self.conn.park(m);
        }
        if answer.status == Some(503) {
            return Err(self
                .conn
                .error(NatsErrorKind::NoJetStream(subject.to_owned())));
        }
        let value: Value = serde_json::from_slice(&answer.payload).map_err(|e| {
            self.conn.error(NatsErrorKind::Server(format!(
                "an answer to {subject} that is not JSON: {e}"
            )))
        })?;
        if let Some(error) = value.get("error") {
            return Err(self.conn.error(NatsErrorKind::Api {
                subject: subject.to_owned(),
                description: error
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("(no description)")
                    .to_owned(),
                code: error.get("err_code").and_then(Value::as_u64).unwrap_or(0),
            }));
        }
        Ok(value)
    }

    /// The sequences `stream` holds; [`NatsErrorKind::StreamNotFound`] if
    /// there is no such stream.
    pub fn stream_state(&mut self, stream: &str) -> Result<StreamState, NatsError> {
        let info = match self.request(&format!("$JS.API.STREAM.INFO.{stream}"), b"") {
            Err(NatsError {
                kind: NatsErrorKind::Api { code: 10059, .. },
                ..
            }) => {
                return Err(self
                    .conn
                    .error(NatsErrorKind::StreamNotFound(stream.to_owned())))
            }
            other => other?,
        };
        let seq = |name: &str| {
            info.get("state")
                .and_then(|s| s.get(name))
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    self.conn.error(NatsErrorKind::Server(format!(
                        "stream info of {stream} without state.{name}"
                    )))
                })
        };
        Ok(StreamState {
            first_seq: seq("first_seq")?,
            last_seq: seq("last_seq")?,
        })
    }

    /// Creates `stream` (file storage, one replica) capturing `subjects`.
    pub fn create_stream(&mut self, stream: &str, subjects: &[&str]) -> Result<(), NatsError> {
        let config = json!({
            "name": stream,
            "subjects": subjects,
            "storage": "file",
            "retention": "limits",
            "num_replicas": 1,
        });
        self.request(
            &format!("$JS.API.STREAM.CREATE.{stream}"),
            config.to_string().as_bytes(),
        )?;
        Ok(())
    }

    /// Publishes `payloads` to `subject`, pipelined, and waits until the
    /// stream has stored each one; returns the last one's stream sequence.
    pub fn publish_acked(&mut self, subject: &str, payloads: &[Vec<u8>]) -> Result<u64, NatsError> {
        let first = self.next_request + 1;
        for payload in payloads {
            self.next_request += 1;
            let reply = format!("{}.r.{}", self.inbox, self.next_request);
            self.conn.publish(subject, Some(&reply), payload)?;
        }
        let last_reply = format!("{}.r.{}", self.inbox, self.next_request);
        let deadline = Instant::now() + self.timeout;
        let mut acked = 0;
        let mut last_seq = 0;
        while acked < payloads.len() {
            let Some(m) = self.conn.next_message(deadline)? else {
                return Err(self.conn.error(NatsErrorKind::Timeout {
                    what: format!("acks of {} messages on {subject}", payloads.len()),
                    timeout_ms: super::duration_ms(self.timeout),
                }));
            };
            let n = m
                .subject
                .rsplit('.')
                .next()
                .and_then(|n| n.parse::<u64>().ok());
            if m.sid != REQUEST_SID || n.is_none_or(|n| n < first) {
                continue;
            }
            if m.status == Some(503) {
                return Err(self.conn.error(NatsErrorKind::NoJetStream(subject.into())));
            }
            let ack: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            let Some(seq) = ack.get("seq").and_then(Value::as_u64) else {
                return Err(self.conn.error(NatsErrorKind::Server(format!(
                    "publish to {subject} not stored: {}",
                    String::from_utf8_lossy(&m.payload)
                ))));
            };
            acked += 1;
            if m.subject == last_reply {
                last_seq = seq;
            }
        }
        Ok(last_seq)
    }
}

/// A message read from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Its stream sequence.
    pub seq: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Reads one stream in order from a sequence (see the module doc).
pub struct StreamReader {
    js: JetStream,
    stream: String,
    consumer: String,
    deliver_subject: String,
    outstanding: u32,
    state: StreamState,
    /// When the reader was opened.
    opened: Instant,
    /// When the server last answered one of its pulls.
    last_answer: Option<Instant>,
}

impl StreamReader {
    /// Connects and starts reading `stream` at `start_seq` (or at the first
    /// sequence still stored, if later).
    pub fn open(
        server: &str,
        stream: &str,
        start_seq: u64,
        timeout: Duration,
    ) -> Result<Self, NatsError> {
        let mut js = JetStream::connect(server, timeout)?;
        let state = js.stream_state(stream)?;
        let config = json!({
            "stream_name": stream,
            "config": {
                "deliver_policy": "by_start_sequence",
                "opt_start_seq": start_seq.max(1),
                "ack_policy": "none",
                "replay_policy": "instant",
                "inactive_threshold": CONSUMER_INACTIVE_MS * 1_000_000,
                "num_replicas": 1,
                "mem_storage": true,
            },
        });
        let created = js.request(
            &format!("$JS.API.CONSUMER.CREATE.{stream}"),
            config.to_string().as_bytes(),
        )?;
        let Some(consumer) = created.get("name").and_then(Value::as_str) else {
            return Err(js.conn.error(NatsErrorKind::Server(
                "consumer created without a name".into(),
            )));
        };
        let consumer = consumer.to_owned();
        let deliver_subject = format!("{}.d", js.inbox);
        js.conn.subscribe(&deliver_subject, DELIVER_SID);
        Ok(Self {
            js,
            stream: stream.to_owned(),
            consumer,
            deliver_subject,
            outstanding: 0,
            state,
            opened: Instant::now(),
            last_answer: None,
        })
    }

    /// The stream's sequences when the reader was opened.
    pub fn state(&self) -> StreamState {
        self.state
    }

    /// When the server last answered a pull of this reader (a message, a
    /// heartbeat or the end of a pull); `None` before the first answer.
    pub fn last_answer(&self) -> Option<Instant> {
        self.last_answer
    }

    /// The next message, or `None` if none came before `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<Delivered>, NatsError> {
        loop {
            // A second pull goes out when half the first is read, so the
            // server always has one to fill (pulls are cheap to over-ask:
            // an unfilled one expires).
            if self.outstanding <= PULL_BATCH_MESSAGES / 2 {
                let pull = json!({
                    "batch": PULL_BATCH_MESSAGES,
                    "expires": PULL_EXPIRES_MS * 1_000_000,
                });
                self.js.conn.publish(
                    &format!(
                        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                        self.stream, self.consumer
                    ),
                    Some(&self.deliver_subject),
                    pull.to_string().as_bytes(),
                )?;
                self.outstanding += PULL_BATCH_MESSAGES;
            }
            let Some(m) = self.js.conn.next_message(deadline)? else {
                let heard = self.last_answer.unwrap_or(self.opened);
                let silent_ms = u64::try_from(heard.elapsed().as_millis()).unwrap_or(u64::MAX);
                if self.outstanding > 0 && silent_ms > PULL_SILENCE_LIMIT_MS {
                    return Err(self.js.conn.error(NatsErrorKind::Timeout {
                        what: format!("the pulls of stream {}", self.stream),
                        timeout_ms: silent_ms,
                    }));
                }
                return Ok(None);
            };
            if m.sid != DELIVER_SID {
                continue;
            }
            self.last_answer = Some(Instant::now());
            match m.status {
                None => {}
                // Heartbeat.
                Some(100) => continue,
                // The pull request ended (expired, or nothing to wait for).
                Some(404 | 408) => {
                    self.outstanding = 0;
                    continue;
                }
                Some(409) => {
                    return Err(self.js.conn.error(NatsErrorKind::ConsumerGone(
                        String::from_utf8_lossy(&m.payload).into_owned(),
                    )))
                }
                Some(other) => {
                    return Err(self.js.conn.error(NatsErrorKind::Server(format!(
                        "status {other} on a pull of {}",
                        self.stream
                    ))))
                }
            }
            let Some(seq) = m.reply.as_deref().and_then(ack_stream_seq) else {
                return Err(self.js.conn.error(NatsErrorKind::Server(format!(
                    "a message of {} without a JetStream ack subject ({:?})",
                    self.stream, m.reply
                ))));
            };
            self.outstanding = self.outstanding.saturating_sub(1);
            return Ok(Some(Delivered {
                seq,
                payload: m.payload,
            }));
        }
    }
}

/// The stream sequence in a JetStream ack subject: `$JS.ACK.<stream>.
/// <consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or
/// the newer form with a domain and an account hash after `ACK` and a
/// random token at the end.
pub fn ack_stream_seq(reply: &str) -> Option<u64> {
    let tokens: Vec<&str> = reply.split('.').collect();
    if tokens.len() < 2 || tokens[0] != "$JS" || tokens[1] != "ACK" {
        return None;
    }
    let at = match tokens.len() {
        9 => 5,
        n if n >= 12 => 7,
        _ => return None,
    };
    tokens[at].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::ack_stream_seq;

    #[test]
    fn stream_sequence_from_both_ack_subject_forms() {
        assert_eq!(ack_stream_seq("$JS.ACK.S.c.1.42.7.1700000000.3"), Some(42));
        assert_eq!(
            ack_stream_seq("$JS.ACK.dom.hash.S.c.1.43.7.1700000000.3.tok"),
            Some(43)
        );
        assert_eq!(ack_stream_seq("$JS.ACK.S.c.1.x.7.1.3"), None);
        assert_eq!(ack_stream_seq("_INBOX.x"), None);
        assert_eq!(ack_stream_seq("$JS.ACK.S.c.1"), None);
    }
}
