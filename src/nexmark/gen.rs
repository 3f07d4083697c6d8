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
