//! The NATS client protocol's server operations, parsed from a byte buffer
//! that grows as the socket delivers (no operation is assumed to arrive in
//! one read). Frames are bounded: a control line by
//! [`MAX_CONTROL_LINE_BYTES`], a message by the server's `max_payload`.
//!
//! ```text
//! INFO {json}\r\n | PING\r\n | PONG\r\n | +OK\r\n | -ERR 'text'\r\n
//! MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n
//! HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>\r\n<headers><payload>\r\n
//! ```

/// The longest control line accepted (the server's default is 4 KiB).
pub const MAX_CONTROL_LINE_BYTES: usize = 4096;

/// One operation sent by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOp {
    /// `INFO`: the server's JSON description.
    Info(String),
    /// `MSG` or `HMSG`.
    Msg(Message),
    /// `PING`: must be answered with `PONG`.
    Ping,
    /// `PONG`: the answer to our `PING`.
    Pong,
    /// `+OK` (only in verbose mode).
    Ok,
    /// `-ERR`: the server's error text.
    Err(String),
}

/// A delivered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published to.
    pub subject: String,
    /// The subscription it was delivered on.
    pub sid: u64,
    /// Its reply subject (for JetStream deliveries, the ack subject that
    /// carries the stream sequence).
    pub reply: Option<String>,
    /// The status code of its header line (`NATS/1.0 404 No Messages`), if
    /// it has headers with one.
    pub status: Option<u16>,
    /// The payload (headers excluded).
    pub payload: Vec<u8>,
}

/// Bytes that are not the NATS protocol, or frames over the limits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

/// Bytes received and not parsed yet.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    max_payload_bytes: usize,
}

impl FrameBuffer {
    /// An empty buffer accepting messages up to `max_payload_bytes`.
    pub fn new(max_payload_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_payload_bytes,
        }
    }

    /// Changes the largest message accepted (from the server's `INFO`).
    pub fn set_max_payload_bytes(&mut self, max_payload_bytes: usize) {
        self.max_payload_bytes = max_payload_bytes;
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (64 << 10) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete operation, `None` if more bytes are needed.
    pub fn next_op(&mut self) -> Result<Option<ServerOp>, ProtocolError> {
        let rest = &self.buf[self.start..];
        let Some(line_len) = memchr::memmem::find(rest, b"\r\n") else {
            if rest.len() > MAX_CONTROL_LINE_BYTES {
                return Err(ProtocolError(format!(
                    "a control line longer than {MAX_CONTROL_LINE_BYTES} bytes"
                )));
            }
            return Ok(None);
        };
        if line_len > MAX_CONTROL_LINE_BYTES {
            return Err(ProtocolError(format!(
                "a control line longer than {MAX_CONTROL_LINE_BYTES} bytes"
            )));
        }
        let line = std::str::from_utf8(&rest[..line_len])
            .map_err(|_| ProtocolError("a control line that is not UTF-8".into()))?;
        let (verb, args) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let args = args.trim_start();
        let simple = |op| Ok(Some(op));
        let op_end = self.start + line_len + 2;
        let result = match verb.to_ascii_uppercase().as_str() {
            "PING" => simple(ServerOp::Ping),
            "PONG" => simple(ServerOp::Pong),
            "+OK" => simple(ServerOp::Ok),
            "-ERR" => simple(ServerOp::Err(args.trim_matches('\'').to_owned())),
            "INFO" => simple(ServerOp::Info(args.to_owned())),
            "MSG" | "HMSG" => {
                let (with_headers, args) = (verb.len() == 4, args.to_owned());
                return self.message(with_headers, &args, op_end);
            }
            _ => Err(ProtocolError(format!(
                "unknown operation {:?}",
                shorten(line)
            ))),
        };
        self.start = op_end;
        result
    }

    /// Parses a `MSG`/`HMSG` whose control line ends at `body_start`.
    fn message(
        &mut self,
        with_headers: bool,
        args: &str,
        body_start: usize,
    ) -> Result<Option<ServerOp>, ProtocolError> {
        let fields: Vec<&str> = args.split_ascii_whitespace().collect();
        let bad = || ProtocolError(format!("a malformed message line {:?}", shorten(args)));
        let numbers = if with_headers { 2 } else { 1 };
        if fields.len() < 2 + numbers || fields.len() > 3 + numbers {
            return Err(bad());
        }
        let parse = |s: &str| s.parse::<usize>().map_err(|_| bad());
        let total_len = parse(fields[fields.len() - 1])?;
        let header_len = if with_headers {
            parse(fields[fields.len() - 2])?
        } else {
            0
        };
        if header_len > total_len {
            return Err(bad());
        }
        if total_len
            > self
                .max_payload_bytes
                .saturating_add(MAX_CONTROL_LINE_BYTES)
        {
            return Err(ProtocolError(format!(
                "a message of {total_len} bytes, over the limit of {} bytes",
                self.max_payload_bytes
            )));
        }
        let sid = fields[1].parse::<u64>().map_err(|_| bad())?;
        let reply = (fields.len() == 3 + numbers).then(|| fields[2].to_owned());
        let subject = fields[0].to_owned();
        if self.buf.len() < body_start + total_len + 2 {
            return Ok(None);
        }
        let body = &self.buf[body_start..body_start + total_len];
        if &self.buf[body_start + total_len..body_start + total_len + 2] != b"\r\n" {
            return Err(ProtocolError(format!(
                "message on {subject} not followed by CRLF after {total_len} bytes"
            )));
        }
        let status = if with_headers {
            header_status(&body[..header_len])?
        } else {
            None
        };
        let payload = body[header_len..].to_vec();
        self.start = body_start + total_len + 2;
        Ok(Some(ServerOp::Msg(Message {
            subject,
            sid,
            reply,
            status,
            payload,
        })))
    }
}

/// The status code of a header block `NATS/1.0[ <code>[ <text>]]\r\n...`.
fn header_status(headers: &[u8]) -> Result<Option<u16>, ProtocolError> {
    let first = headers.split(|&b| b == b'\r').next().unwrap_or_default();
    let Some(rest) = first.strip_prefix(b"NATS/1.0") else {
        return Err(ProtocolError(
            "a header block not starting with NATS/1.0".into(),
        ));
    };
    let rest = std::str::from_utf8(rest)
        .map_err(|_| ProtocolError("a header status line that is not UTF-8".into()))?;
    match rest.split_ascii_whitespace().next() {
        None => Ok(None),
        Some(code) => code
            .parse::<u16>()
            .map(Some)
            .map_err(|_| ProtocolError(format!("a header status {:?}", shorten(rest)))),
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(bytes: &[u8]) -> Result<Vec<ServerOp>, ProtocolError> {
        let mut frames = FrameBuffer::new(1 << 20);
        frames.extend(bytes);
        let mut out = Vec::new();
        while let Some(op) = frames.next_op()? {
            out.push(op);
        }
        Ok(out)
    }

    #[test]
    fn parses_every_operation() {
        let bytes = b"INFO {\"max_payload\":1}\r\nPING\r\npong\r\n+OK\r\n-ERR 'Unknown Subject'\r\n\
MSG a.b 7 _INBOX.x 5\r\nhello\r\nHMSG i 2 $JS.ACK.s.c.1.9.9.0.0 28 30\r\nNATS/1.0 404 No Messages\r\n\r\nhi\r\n";
        let got = ops(bytes).unwrap();
        assert_eq!(got.len(), 7);
        assert_eq!(got[4], ServerOp::Err("Unknown Subject".into()));
        assert_eq!(
            got[5],
            ServerOp::Msg(Message {
                subject: "a.b".into(),
                sid: 7,
                reply: Some("_INBOX.x".into()),
                status: None,
                payload: b"hello".to_vec(),
            })
        );
        let ServerOp::Msg(m) = &got[6] else { panic!() };
        assert_eq!((m.status, m.payload.as_slice()), (Some(404), &b"hi"[..]));
    }

    #[test]
    fn every_truncation_waits_for_more_and_then_parses_the_same() {
        let bytes: &[u8] =
            b"MSG s 1 r 3\r\nabc\r\nHMSG s 1 12 14\r\nNATS/1.0\r\n\r\nxy\r\nPING\r\n";
        let whole = ops(bytes).unwrap();
        for cut in 0..bytes.len() {
            let mut frames = FrameBuffer::new(1 << 20);
            frames.extend(&bytes[..cut]);
            let mut got = Vec::new();
            while let Some(op) = frames.next_op().unwrap() {
                got.push(op);
            }
            assert!(got.len() < whole.len(), "cut {cut}");
            frames.extend(&bytes[cut..]);
            while let Some(op) = frames.next_op().unwrap() {
                got.push(op);
            }
            assert_eq!(got, whole, "cut {cut}");
        }
    }

    #[test]
    fn corrupt_frames_are_refused() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"MSG s x 3\r\nabc\r\n",
            b"MSG s 1 3 4 5\r\nabc\r\n",
            b"MSG s 1 3\r\nabcd\r\n",
            b"HMSG s 1 5 3\r\nabc\r\n",
            b"HMSG s 1 3 3\r\nXYZ\r\n",
            b"MSG s 1 99999999\r\n",
            b"\xff\xfe\r\n",
        ] {
            assert!(ops(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'A'; MAX_CONTROL_LINE_BYTES + 1];
        assert!(ops(&long).is_err());
    }
}
