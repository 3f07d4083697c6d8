//! The Nexmark queries written as plainly as possible, from typed records,
//! for tests to compare with. Lateness (DESIGN §2) is applied per partition
//! of each table first; then each query is a few lines over plain maps.

use std::collections::{BTreeMap, BTreeSet};

use super::{NexmarkQuery, Q5_SLIDE_MS, WINDOW_MS};

/// A bid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bid {
    /// Event time, ms.
    pub date_time: u64,
    /// The auction bid on.
    pub auction: u64,
    /// The person bidding.
    pub bidder: u64,
    /// The price.
    pub price: u64,
}

/// A person registering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    /// Event time, ms.
    pub date_time: u64,
    /// The person's id.
    pub id: u64,
    /// The person's name.
    pub name: String,
}

/// An auction opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auction {
    /// Event time, ms.
    pub date_time: u64,
    /// The auction's id.
    pub id: u64,
    /// The person selling.
    pub seller: u64,
}

/// The input of a query: each table as partitions of records in log order.
#[derive(Clone, Debug, Default)]
pub struct NexmarkInput {
    /// Person partitions.
    pub persons: Vec<Vec<Person>>,
    /// Auction partitions.
    pub auctions: Vec<Vec<Auction>>,
    /// Bid partitions.
    pub bids: Vec<Vec<Bid>>,
}

/// The records of `partitions` that are not late.
fn accepted<T: Clone>(partitions: &[Vec<T>], time: fn(&T) -> u64, lateness_ms: u64) -> Vec<T> {
    let mut out = Vec::new();
    for partition in partitions {
        let mut max_ts: Option<u64> = None;
        for record in partition {
            let ts = time(record);
            if max_ts.is_none_or(|m| ts >= m.saturating_sub(lateness_ms)) {
                out.push(record.clone());
            }
            max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
        }
    }
    out
}

fn csv(fields: &[String]) -> String {
    super::line(&fields.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The result rows of `query` on `input` (CSV lines, sorted).
pub fn reference(query: NexmarkQuery, input: &NexmarkInput, lateness_ms: u64) -> Vec<String> {
    let bids = accepted(&input.bids, |b| b.date_time, lateness_ms);
    let mut rows = Vec::new();
    match query {
        NexmarkQuery::Q5 => {
            // Bid counts per (window start, auction); windows starting before
            // 0 are reported from 0, as everywhere in weir.
            let mut counts: BTreeMap<(u64, u64), BTreeMap<u64, u64>> = BTreeMap::new();
            for bid in &bids {
                let last_start = bid.date_time - bid.date_time % Q5_SLIDE_MS;
                let (size, slide) = (i128::from(WINDOW_MS), i128::from(Q5_SLIDE_MS));
                let mut start = i128::from(last_start);
                while start > i128::from(bid.date_time) - size {
                    let window = (start.max(0) as u64, (start + size) as u64);
                    *counts
                        .entry(window)
                        .or_default()
                        .entry(bid.auction)
                        .or_default() += 1;
                    start -= slide;
                }
            }
            for ((start, end), auctions) in counts {
                let most = auctions.values().copied().max().unwrap_or(0);
                for (auction, n) in auctions.into_iter().filter(|(_, n)| *n == most) {
                    rows.push(csv(&[
                        start.to_string(),
                        end.to_string(),
                        auction.to_string(),
                        n.to_string(),
                    ]));
                }
            }
        }
        NexmarkQuery::Q7 => {
            let mut windows: BTreeMap<u64, Vec<&Bid>> = BTreeMap::new();
            for bid in &bids {
                windows
                    .entry(bid.date_time - bid.date_time % WINDOW_MS)
                    .or_default()
                    .push(bid);
            }
            for (start, bids) in windows {
                let highest = bids.iter().map(|b| b.price).max().unwrap_or(0);
                for bid in bids.iter().filter(|b| b.price == highest) {
                    rows.push(csv(&[
                        start.to_string(),
                        (start + WINDOW_MS).to_string(),
                        bid.auction.to_string(),
                        bid.bidder.to_string(),
                        bid.price.to_string(),
                    ]));
                }
            }
        }
        NexmarkQuery::Q8 => {
            let persons = accepted(&input.persons, |p| p.date_time, lateness_ms);
            let auctions = accepted(&input.auctions, |a| a.date_time, lateness_ms);
            let window = |ts: u64| ts - ts % WINDOW_MS;
            let sellers: BTreeSet<(u64, u64)> = auctions
                .iter()
                .map(|a| (window(a.date_time), a.seller))
                .collect();
            let mut joined: BTreeMap<(u64, u64), String> = BTreeMap::new();
            for p in &persons {
                let key = (window(p.date_time), p.id);
                if sellers.contains(&key) {
                    let name = joined.entry(key).or_insert_with(|| p.name.clone());
                    if p.name < *name {
                        name.clone_from(&p.name);
                    }
                }
            }
            for ((start, id), name) in joined {
                rows.push(csv(&[
                    start.to_string(),
                    (start + WINDOW_MS).to_string(),
                    id.to_string(),
                    name,
                ]));
            }
        }
        NexmarkQuery::Q11 => {
            let mut times: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for bid in &bids {
                times.entry(bid.bidder).or_default().push(bid.date_time);
            }
            for (bidder, mut ts) in times {
                ts.sort_unstable();
                let mut session = (ts[0], ts[0], 0u64);
                for &t in &ts {
                    if t >= session.1 + WINDOW_MS {
                        rows.push(session_row(bidder, session));
                        session = (t, t, 0);
                    }
                    session.1 = t;
                    session.2 += 1;
                }
                rows.push(session_row(bidder, session));
            }
        }
        NexmarkQuery::Q12 => {
            let mut counts: BTreeMap<(u64, u64), u64> = BTreeMap::new();
            for bid in &bids {
                *counts
                    .entry((bid.bidder, bid.date_time - bid.date_time % WINDOW_MS))
                    .or_default() += 1;
            }
            for ((bidder, start), n) in counts {
                rows.push(csv(&[
                    bidder.to_string(),
                    start.to_string(),
                    (start + WINDOW_MS).to_string(),
                    n.to_string(),
                ]));
            }
        }
    }
    rows.sort();
    rows
}

fn session_row(bidder: u64, (first, last, count): (u64, u64, u64)) -> String {
    csv(&[
        bidder.to_string(),
        first.to_string(),
        (last + WINDOW_MS).to_string(),
        count.to_string(),
    ])
}
