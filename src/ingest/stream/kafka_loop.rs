//! The loop of a Kafka-protocol source: every partition of the topic into
//! the log partition of the same number, one fetch round for all of them
//! (each partition asked of its leader,
//! [`crate::kafka::cluster::TopicClient`]); the exactly-once protocol of
//! the parent module per partition (each has its own `POSITION` and
//! dead-letter file `<dead-letter stem>-<partition>.csv`), committed
//! together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::appender::{partition_bytes, Appender, SourceMessage};
use super::options::{
    give_up_after, reconnect, StreamIngestOptions, StreamIngestReport, FLUSH_INTERVAL,
};
use super::{StreamIngestError, StreamSource, MAX_UNCOMMITTED_MESSAGES};
use crate::ingest::idle::{IdleMarkers, MIN_IDLE_TIMEOUT_MS};
use crate::kafka::batch::{decode_batches, incomplete_first_batch_bytes};
use crate::kafka::cluster::TopicClient;
use crate::kafka::{
    KafkaError, KafkaErrorKind, FETCH_PARTITION_LIMIT_BYTES, FETCH_PARTITION_MAX_BYTES,
};

/// How long a fetch waits on the broker for data.
const FETCH_WAIT_MS: i32 = 100;

/// The dead-letter file of `partition`: `-<partition>` before the extension.
fn dead_letter_path_of(path: &Path, partition: u32) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{partition}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{partition}"),
    };
    path.with_file_name(name)
}

/// One attempt (see the module doc and [`super::ingest_stream`]): its
/// appenders go into `appenders`, their reports on from `earlier`.
pub(super) fn ingest_kafka(
    log_dir: &Path,
    source: &StreamSource,
    options: &StreamIngestOptions,
    stop: &AtomicBool,
    (appenders, earlier): (&mut Vec<Appender>, &BTreeMap<u32, StreamIngestReport>),
) -> Result<(), StreamIngestError> {
    let timeout = Duration::from_millis(options.connect_timeout_ms.max(1));
    let request_timeout = Duration::from_millis(options.request_timeout_ms.max(1)).max(timeout);
    let topic = source.name.as_str();
    let connect = || TopicClient::connect(&source.server, topic, timeout, request_timeout);
    let mut client = connect()?;
    let partitions = client.partitions();
    let brokers = client.metadata().brokers.len();
    if brokers > 1 {
        tracing::info!(%source, brokers, "partitions are fetched from their leaders");
    }
    for &p in &partitions {
        let log_partition = u32::try_from(p).map_err(|_| {
            client.error(KafkaErrorKind::Broker {
                api: "Metadata",
                what: format!("{topic} partition {p}"),
                code: -1,
            })
        })?;
        let mut appender = Appender::open(
            log_dir,
            (&format!("kafka:{topic}:{p}"), format!("{source}#{p}")),
            options,
            (log_partition, earlier.get(&log_partition)),
            &dead_letter_path_of(&options.dead_letter_path, log_partition),
        )?;
        appender.gaps_expected = true;
        appenders.push(appender);
    }
    // Where each partition's next fetch starts: past control batches too.
    let mut fetch_from: Vec<i64> = appenders
        .iter()
        .map(|a| i64::try_from(a.current.source_seq).unwrap_or(i64::MAX))
        .collect();
    let (earliest, targets) = start_offsets(&mut client, &partitions, connect)?;
    for ((p, &first), &from) in partitions.iter().zip(&earliest).zip(&fetch_from) {
        if first > from {
            tracing::warn!(
                "{source}: partition {p}: offsets {from}..{} were removed before they were ingested",
                first - 1
            );
        }
    }
    // Bytes each partition's fetch asks for: grown for a batch larger than it.
    let mut fetch_bytes = vec![FETCH_PARTITION_MAX_BYTES; partitions.len()];
    let interval = Duration::from_millis(options.commit_interval_ms.max(1));
    let (mut last_commit, mut last_flush) = (Instant::now(), Instant::now());
    // Since when fetches have failed, with no fetch answered in between: a
    // broker that accepts connections but never answers a fetch in time
    // must end the source, not keep it retrying silently.
    let mut failing_since: Option<Instant> = None;
    let started = Instant::now();
    let clock_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut idle = options.idle_timeout_ms.map(|timeout_ms| {
        IdleMarkers::new(partitions.len(), timeout_ms.max(MIN_IDLE_TIMEOUT_MS), 0)
    });
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if options.until_caught_up
            && appenders
                .iter()
                .zip(&targets)
                .all(|(a, &t)| a.current.source_seq >= u64::try_from(t).unwrap_or(0))
        {
            for (a, &t) in appenders.iter().zip(&targets) {
                a.check_tail_matched(u64::try_from(t).unwrap_or(0))?;
            }
            break;
        }
        let now = Instant::now();
        if now >= last_flush + FLUSH_INTERVAL {
            for a in appenders.iter_mut() {
                a.writer.flush()?;
            }
            last_flush = now;
            if let Some(max) = options.max_log_bytes {
                if appenders.iter().any(|a| partition_bytes(&a.dir) >= max) {
                    commit_all(appenders)?;
                    appenders[0].report.pauses += 1;
                    if let Some(m) = &options.metrics {
                        m.paused();
                    }
                    std::thread::sleep(interval.max(Duration::from_millis(100)));
                    last_commit = Instant::now();
                    continue;
                }
            }
        }
        let at: Vec<(i32, i64, i32)> = (0..partitions.len())
            .map(|i| (partitions[i], fetch_from[i], fetch_bytes[i]))
            .collect();
        let positions = (&mut fetch_from[..], &mut fetch_bytes[..]);
        match fetch_into(
            &mut client,
            topic,
            &at,
            appenders,
            positions,
            &mut |i, ts| {
                if let Some(idle) = idle.as_mut() {
                    idle.appended(i, ts, clock_ms());
                }
            },
        ) {
            Ok(()) => {
                failing_since = None;
                if let Some(idle) = idle.as_mut() {
                    append_idle_markers(idle, clock_ms(), appenders)?;
                }
            }
            Err(StreamIngestError::Kafka(e)) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if let Err(gave_up) = give_up_after(since, options.reconnect_limit_ms, &e) {
                    commit_all(appenders)?;
                    return Err(gave_up);
                }
                tracing::warn!("{source}: {e}; reconnecting");
                commit_all(appenders)?;
                last_commit = Instant::now();
                client = reconnect(
                    source,
                    options.reconnect_limit_ms,
                    stop,
                    connect,
                    KafkaError::is_transient,
                )?;
                appenders[0].report.reconnects += 1;
                if let Some(m) = &options.metrics {
                    m.reconnected();
                }
            }
            Err(e) => {
                commit_all(appenders)?;
                return Err(e);
            }
        }
        let uncommitted: u64 = appenders.iter().map(|a| a.uncommitted).sum();
        if uncommitted >= MAX_UNCOMMITTED_MESSAGES
            || (uncommitted > 0 && Instant::now() >= last_commit + interval)
        {
            commit_all(appenders)?;
            last_commit = Instant::now();
        }
    }
    commit_all(appenders)
}

/// The first offset still stored and the end of each partition. A leader
/// that moves meanwhile (`LEADER_NOT_AVAILABLE`, `NOT_LEADER_OR_FOLLOWER`,
/// a leader the metadata does not list) is waited for: the metadata is read
/// again, up to [`LEADER_RETRIES`] times; other failures are returned.
fn start_offsets(
    client: &mut TopicClient,
    partitions: &[i32],
    connect: impl Fn() -> Result<TopicClient, KafkaError>,
) -> Result<(Vec<i64>, Vec<i64>), KafkaError> {
    let mut retries = 0;
    loop {
        let offsets = client
            .offsets(partitions, -2)
            .and_then(|earliest| Ok((earliest, client.offsets(partitions, -1)?)));
        match offsets {
            Err(e) if retries < LEADER_RETRIES && leader_moved(&e) => {
                tracing::warn!("{e}; reading the metadata again");
                // A broker between leaders may refuse a connection too.
                loop {
                    retries += 1;
                    std::thread::sleep(Duration::from_millis(100 * u64::from(retries)));
                    match connect() {
                        Ok(reconnected) => break *client = reconnected,
                        Err(e) if retries < LEADER_RETRIES && e.is_transient() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            other => return other,
        }
    }
}

/// How often the start waits for a partition's leader.
const LEADER_RETRIES: u32 = 10;

fn leader_moved(e: &KafkaError) -> bool {
    matches!(
        e.kind,
        KafkaErrorKind::Broker { code: 5 | 6, .. } | KafkaErrorKind::UnknownLeader { .. }
    )
}

/// Appends the idle markers due at `now_ms`, after handing the events
/// before them to the file system (a reader never sees a marker before the
/// events its watermark came from).
fn append_idle_markers(
    idle: &mut IdleMarkers,
    now_ms: u64,
    appenders: &mut [Appender],
) -> Result<(), StreamIngestError> {
    let due = idle.due(now_ms);
    if !due.is_empty() {
        for a in appenders.iter_mut() {
            a.writer.flush()?;
        }
    }
    for (i, watermark_ms) in due {
        appenders[i].append_idle_marker(watermark_ms)?;
    }
    Ok(())
}

/// One fetch, its records handed to the partitions' appenders; `appended`
/// is told each event's partition index and time.
fn fetch_into(
    client: &mut TopicClient,
    topic: &str,
    at: &[(i32, i64, i32)],
    appenders: &mut [Appender],
    (fetch_from, fetch_bytes): (&mut [i64], &mut [i32]),
    appended: &mut dyn FnMut(usize, u64),
) -> Result<(), StreamIngestError> {
    for fetched in client.fetch(at, FETCH_WAIT_MS)? {
        let Some(i) = at.iter().position(|&(p, ..)| p == fetched.partition) else {
            continue;
        };
        if fetched.error_code != 0 {
            return Err(client
                .error(KafkaErrorKind::Broker {
                    api: "Fetch",
                    what: format!(
                        "{topic} partition {} at offset {}",
                        fetched.partition, at[i].1
                    ),
                    code: fetched.error_code,
                })
                .into());
        }
        let mut inflated = Vec::new();
        let (records, next) =
            decode_batches(&fetched.records, at[i].1, &mut inflated).map_err(|error| {
                client.error(KafkaErrorKind::Wire {
                    api: "Fetch",
                    error,
                })
            })?;
        if next == at[i].1 {
            // No complete batch: a broker that cut the first one at the
            // byte limit is asked for all of it next time.
            if let Some(whole) = incomplete_first_batch_bytes(&fetched.records) {
                let needed = i32::try_from(whole).unwrap_or(i32::MAX);
                if needed > FETCH_PARTITION_LIMIT_BYTES {
                    return Err(client
                        .error(KafkaErrorKind::BatchTooLarge {
                            topic: topic.to_owned(),
                            partition: fetched.partition,
                            offset: at[i].1,
                            batch_bytes: whole,
                        })
                        .into());
                }
                if needed > fetch_bytes[i] {
                    tracing::debug!(
                        partition = fetched.partition,
                        bytes = needed,
                        "a record batch larger than the fetch size: asking for it whole"
                    );
                    fetch_bytes[i] = needed;
                }
            }
        }
        for record in records {
            let seq = u64::try_from(record.offset).unwrap_or(0) + 1;
            let event_ts = appenders[i].accept(&SourceMessage {
                seq,
                payload: record.value.unwrap_or_default(),
            })?;
            if let Some(ts) = event_ts {
                appended(i, ts);
            }
        }
        fetch_from[i] = fetch_from[i].max(next);
    }
    Ok(())
}

fn commit_all(appenders: &mut [Appender]) -> Result<(), StreamIngestError> {
    for a in appenders {
        a.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::dead_letter::{default_file_name, default_partition_file_name};
    use super::*;

    #[test]
    fn the_default_partition_dead_letter_file_is_the_one_the_cold_tier_ships() {
        let default = Path::new("data/dead-letter").join(default_file_name("bids"));
        assert_eq!(
            dead_letter_path_of(&default, 3),
            Path::new("data/dead-letter").join(default_partition_file_name("bids", 3))
        );
    }
}
