//! `weir gen nexmark`: the Nexmark generator (the `nexmark` crate, default
//! configuration: 10,000 events per second of event time, 1 person : 3
//! auctions : 46 bids) with a fixed base time, so its output depends only on
//! the event count and the partition count, byte for byte.
//!
//! Partition `p` of `P` holds events `p, p + P, ...`; each is written to its
//! table's file of that partition (`person-<p>.csv`, `auction-<p>.csv`,
//! `bid-<p>.csv`), so times never decrease within a file.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use nexmark::config::NexmarkConfig;
use nexmark::event::Event;
use nexmark::EventGenerator;
use weir_dataflows::nexmark::NexmarkTable;

use crate::csv_input::write_csv_field;

use crate::gen::BASE_TIME_MS;

/// The generator every run and file uses.
pub fn generator() -> EventGenerator {
    EventGenerator::new(NexmarkConfig {
        base_time: BASE_TIME_MS,
        ..NexmarkConfig::default()
    })
}

/// Proportions of the default configuration: of every 50 events, 1 person,
/// then 3 auctions, then 46 bids (by event number).
const PROPORTIONS: [(NexmarkTable, u64); 3] = [
    (NexmarkTable::Person, 1),
    (NexmarkTable::Auction, 3),
    (NexmarkTable::Bid, 46),
];

/// How many of the first `events` generated events belong to `table`.
pub fn table_events(events: u64, table: NexmarkTable) -> u64 {
    let denominator: u64 = PROPORTIONS.iter().map(|(_, n)| n).sum();
    let mut start = 0;
    for (t, n) in PROPORTIONS {
        if t == table {
            let rest = (events % denominator).saturating_sub(start).min(n);
            return events / denominator * n + rest;
        }
        start += n;
    }
    unreachable!("every table has a proportion")
}

/// The generator's name for `table`'s events.
pub fn event_type(table: NexmarkTable) -> nexmark::event::EventType {
    match table {
        NexmarkTable::Person => nexmark::event::EventType::Person,
        NexmarkTable::Auction => nexmark::event::EventType::Auction,
        NexmarkTable::Bid => nexmark::event::EventType::Bid,
    }
}

/// If `event` belongs to `table`: writes its stored key into `key` (see
/// [`NexmarkTable::stored_columns`]) and returns its time and stored value.
pub fn stored_record(event: &Event, table: NexmarkTable, key: &mut String) -> Option<(u64, i64)> {
    key.clear();
    match (event, table) {
        (Event::Person(p), NexmarkTable::Person) => {
            write!(key, "{},{}", p.id, p.name).expect("writing to a String");
            Some((p.date_time, 0))
        }
        (Event::Auction(a), NexmarkTable::Auction) => {
            write!(key, "{}", a.seller).expect("writing to a String");
            Some((a.date_time, 0))
        }
        (Event::Bid(b), NexmarkTable::Bid) => {
            write!(key, "{},{},{}", b.auction, b.bidder, b.price).expect("writing to a String");
            Some((b.date_time, b.price as i64))
        }
        _ => None,
    }
}

/// Writes `events` generated events as `partitions` partitions of table
/// files into `out_dir`; returns the files written.
pub fn generate_files(
    events: u64,
    partitions: u32,
    out_dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    assert!(partitions > 0, "at least one partition");
    std::fs::create_dir_all(out_dir)?;
    let mut paths = Vec::new();
    for p in 0..u64::from(partitions) {
        let mut writers = Vec::new();
        for table in NexmarkTable::ALL {
            let path = out_dir.join(format!("{}-{p}.csv", table.name()));
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&path)?);
            writeln!(w, "{}", table.header())?;
            writers.push(w);
            paths.push(path);
        }
        let count = events.saturating_sub(p).div_ceil(u64::from(partitions));
        let generator = generator().with_offset(p).with_step(u64::from(partitions));
        for event in generator.take(count as usize) {
            match &event {
                Event::Person(x) => {
                    let w = &mut writers[0];
                    write!(w, "{},", x.id)?;
                    for text in [&x.name, &x.email_address, &x.credit_card, &x.city, &x.state] {
                        write_csv_field(w, text)?;
                        w.write_all(b",")?;
                    }
                    write!(w, "{},", x.date_time)?;
                    write_csv_field(w, &x.extra)?;
                }
                Event::Auction(x) => {
                    let w = &mut writers[1];
                    write!(w, "{},", x.id)?;
                    write_csv_field(w, &x.item_name)?;
                    w.write_all(b",")?;
                    write_csv_field(w, &x.description)?;
                    write!(
                        w,
                        ",{},{},{},{},{},{},",
                        x.initial_bid, x.reserve, x.date_time, x.expires, x.seller, x.category
                    )?;
                    write_csv_field(w, &x.extra)?;
                }
                Event::Bid(x) => {
                    let w = &mut writers[2];
                    write!(w, "{},{},{},", x.auction, x.bidder, x.price)?;
                    write_csv_field(w, &x.channel)?;
                    w.write_all(b",")?;
                    write_csv_field(w, &x.url)?;
                    write!(w, ",{},", x.date_time)?;
                    write_csv_field(w, &x.extra)?;
                }
            }
            let index = match event {
                Event::Person(_) => 0,
                Event::Auction(_) => 1,
                Event::Bid(_) => 2,
            };
            writers[index].write_all(b"\n")?;
        }
        for mut w in writers {
            w.flush()?;
            w.get_ref().sync_all()?;
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_event_counts_follow_the_generator() {
        for events in [0u64, 1, 2, 3, 4, 5, 49, 50, 51, 53, 54, 99, 100, 1234] {
            for table in NexmarkTable::ALL {
                let generated = generator()
                    .take(events as usize)
                    .filter(|e| stored_record(e, table, &mut String::new()).is_some())
                    .count() as u64;
                assert_eq!(table_events(events, table), generated, "{events} {table:?}");
            }
        }
    }

    #[test]
    fn the_type_filtered_generator_yields_the_same_events() {
        for table in NexmarkTable::ALL {
            let all: Vec<_> = generator()
                .take(500)
                .filter(|e| stored_record(e, table, &mut String::new()).is_some())
                .collect();
            let filtered: Vec<_> = generator()
                .with_type_filter(event_type(table))
                .take(all.len())
                .collect();
            assert_eq!(all, filtered, "{table:?}");
        }
    }
}
