//! The loop of a NATS JetStream source: read, decode, append or match,
//! commit; reconnect with backoff when the server goes away; pause while the
//! log is over its size limit. The protocol is in the parent module's doc.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::appender::{partition_bytes, Appender, SourceMessage};
use super::options::{
    give_up_after, reconnect, StreamIngestOptions, StreamIngestReport, FLUSH_INTERVAL,
};
use super::{StreamIngestError, StreamSource, MAX_UNCOMMITTED_MESSAGES};
use crate::nats::jetstream::StreamReader;
use crate::nats::NatsError;

/// One attempt (see [`super::ingest_stream`]): its appender goes into
/// `opened`, its report on from `earlier`.
pub(super) fn ingest_nats(
    log_dir: &Path,
    source: &StreamSource,
    options: &StreamIngestOptions,
    stop: &AtomicBool,
    (opened, earlier): (&mut Vec<Appender>, &BTreeMap<u32, StreamIngestReport>),
) -> Result<(), StreamIngestError> {
    opened.push(Appender::open(
        log_dir,
        (&source.name, source.to_string()),
        options,
        (options.partition, earlier.get(&options.partition)),
        &options.dead_letter_path,
    )?);
    let appender = &mut opened[0];
    let timeout = Duration::from_millis(options.connect_timeout_ms.max(1));
    let start_seq = appender.current.source_seq + 1;
    let mut reader = StreamReader::open(&source.server, &source.name, start_seq, timeout)?;
    let state = reader.state();
    if state.first_seq > start_seq {
        tracing::warn!(
            "{source}: messages {start_seq}..{} were removed from the stream before they were ingested",
            state.first_seq - 1
        );
    }
    let target_seq = state.last_seq;
    let interval = Duration::from_millis(options.commit_interval_ms.max(1));
    let mut last_commit = Instant::now();
    let mut last_flush = Instant::now();
    // Since when reading has failed with no pull answered in between: a
    // server that accepts connections and consumers but then answers no
    // pull must end the source once the reconnect limit has passed, not
    // keep it reconnecting for ever (each reconnect succeeds).
    let mut failing_since: Option<Instant> = None;
    loop {
        if failing_since.is_some_and(|since| reader.last_answer().is_some_and(|t| t > since)) {
            failing_since = None;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if options.until_caught_up && appender.current.source_seq >= target_seq {
            appender.check_tail_matched(target_seq)?;
            break;
        }
        let now = Instant::now();
        if now >= last_flush + FLUSH_INTERVAL {
            appender.writer.flush()?;
            last_flush = now;
            if options
                .max_log_bytes
                .is_some_and(|max| partition_bytes(&appender.dir) >= max)
            {
                appender.commit()?;
                appender.report.pauses += 1;
                if let Some(m) = &options.metrics {
                    m.paused();
                }
                std::thread::sleep(interval.max(Duration::from_millis(100)));
                last_commit = Instant::now();
                continue;
            }
        }
        let deadline = (last_commit + interval)
            .min(last_flush + FLUSH_INTERVAL)
            .max(now + Duration::from_millis(1));
        match reader.next(deadline) {
            Ok(Some(message)) => {
                // One partition: its own time is every partition's, so it
                // needs no idle markers.
                appender.accept(&SourceMessage {
                    seq: message.seq,
                    payload: &message.payload,
                })?;
            }
            Ok(None) => {}
            Err(e) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if let Err(gave_up) = give_up_after(since, options.reconnect_limit_ms, &e) {
                    appender.commit()?;
                    return Err(gave_up);
                }
                tracing::warn!("{source}: {e}; reconnecting");
                appender.commit()?;
                last_commit = Instant::now();
                let from_seq = appender.current.source_seq + 1;
                reader = reconnect(
                    source,
                    options.reconnect_limit_ms,
                    stop,
                    || StreamReader::open(&source.server, &source.name, from_seq, timeout),
                    NatsError::is_transient,
                )?;
                appender.report.reconnects += 1;
                if let Some(m) = &options.metrics {
                    m.reconnected();
                }
            }
            Err(e) => {
                appender.commit()?;
                return Err(e.into());
            }
        }
        if appender.uncommitted >= MAX_UNCOMMITTED_MESSAGES
            || (appender.uncommitted > 0 && now >= last_commit + interval)
        {
            appender.commit()?;
            last_commit = Instant::now();
        }
    }
    appender.commit()
}
