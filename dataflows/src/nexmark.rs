//! Nexmark q5, q7, q8, q11 and q12 as the generic window query plus a
//! result stage.
//!
//! Each query is the generic windowed aggregation (a differential `reduce`
//! per key over pane partials, or session windows) over a projection of the
//! stored Nexmark records, followed by a stage that turns its window rows
//! into the query's result rows:
//!
//! | query | input | window | key | result stage |
//! |---|---|---|---|---|
//! | q5 hot items | bids | sliding 10 s / 2 s | auction | per window: the auctions with the most bids |
//! | q7 highest bid | bids | tumbling 10 s | `auction,bidder,price` | per window: every bid at the highest price |
//! | q8 new users | persons, auctions | tumbling 10 s | person id (+ name) / seller | per window: persons who also opened an auction |
//! | q11 user sessions | bids | session, gap 10 s | bidder | one row per session |
//! | q12 bids per bidder | bids | tumbling 10 s | bidder | one row per bidder and window |
//!
//! Every row of one window is emitted at the same timely time (the window's
//! close time), so the per-window stages hold rows only until the frontier
//! passes that time: they keep no state across windows, and a checkpoint cut
//! (always at a window boundary) never splits a window.

pub mod reference;
mod stage;
#[cfg(test)]
mod stage_tests;

use timely::dataflow::operators::vec::Map;
use timely::dataflow::Stream;

use crate::row::WindowRow;
use crate::window::WindowSpec;

pub use stage::{per_window, Best, WindowStage};

/// Window length of every Nexmark query here, ms.
pub const WINDOW_MS: u64 = 10_000;
/// Slide of q5's sliding window, ms.
pub const Q5_SLIDE_MS: u64 = 2_000;

/// A Nexmark table, as stored in the input log.
///
/// The log keeps, per row, the event time (`date_time`) and a key holding the
/// columns the queries read (see [`NexmarkTable::stored_columns`]); the value
/// is the bid price for bids and 0 otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NexmarkTable {
    /// `person`: people registering.
    Person,
    /// `auction`: auctions opened.
    Auction,
    /// `bid`: bids on auctions.
    Bid,
}

impl NexmarkTable {
    /// All tables, in topic order.
    pub const ALL: [NexmarkTable; 3] = [Self::Person, Self::Auction, Self::Bid];

    /// The table's name: its file prefix and log topic.
    pub fn name(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Auction => "auction",
            Self::Bid => "bid",
        }
    }

    /// The CSV header of the table's files.
    pub fn header(self) -> &'static str {
        match self {
            Self::Person => "id,name,email_address,credit_card,city,state,date_time,extra",
            Self::Auction => {
                "id,item_name,description,initial_bid,reserve,date_time,expires,seller,category,extra"
            }
            Self::Bid => "auction,bidder,price,channel,url,date_time,extra",
        }
    }

    /// The columns joined (with `,`) into the stored key.
    pub fn stored_columns(self) -> &'static str {
        match self {
            Self::Person => "id,name",
            Self::Auction => "seller",
            Self::Bid => "auction,bidder,price",
        }
    }
}

/// One of the Nexmark queries weir implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NexmarkQuery {
    /// Hot items: per sliding window, the auctions with the most bids.
    Q5,
    /// Highest bid: per tumbling window, every bid at the highest price.
    Q7,
    /// New users: persons who opened an auction in the window they registered in.
    Q8,
    /// User sessions: bids per bidder session (gap 10 s).
    Q11,
    /// Bids per bidder per tumbling window.
    Q12,
}

impl NexmarkQuery {
    /// All queries.
    pub const ALL: [NexmarkQuery; 5] = [Self::Q5, Self::Q7, Self::Q8, Self::Q11, Self::Q12];

    /// Parses `q5`, `q7`, `q8`, `q11` or `q12`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.name() == text)
    }

    /// The query's name (`q5` ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q5 => "q5",
            Self::Q7 => "q7",
            Self::Q8 => "q8",
            Self::Q11 => "q11",
            Self::Q12 => "q12",
        }
    }

    /// The window of the underlying aggregation.
    pub fn window(self) -> WindowSpec {
        match self {
            Self::Q5 => WindowSpec::Sliding {
                size_ms: WINDOW_MS,
                slide_ms: Q5_SLIDE_MS,
            },
            Self::Q7 | Self::Q8 | Self::Q12 => WindowSpec::Tumbling { size_ms: WINDOW_MS },
            Self::Q11 => WindowSpec::Session { gap_ms: WINDOW_MS },
        }
    }

    /// The tables the query reads.
    pub fn tables(self) -> &'static [NexmarkTable] {
        match self {
            Self::Q8 => &[NexmarkTable::Person, NexmarkTable::Auction],
            _ => &[NexmarkTable::Bid],
        }
    }

    /// The header of the result files.
    pub fn header(self) -> &'static str {
        match self {
            Self::Q5 => "window_start,window_end,auction,num",
            Self::Q7 => "window_start,window_end,auction,bidder,price",
            Self::Q8 => "window_start,window_end,person_id,name",
            Self::Q11 => "bidder,session_start,session_end,bid_count",
            Self::Q12 => "bidder,window_start,window_end,bid_count",
        }
    }

    /// A one-line description, for summaries.
    pub fn describe(self) -> String {
        format!("nexmark {} ({})", self.name(), self.window())
    }

    /// The aggregation key and value of a stored record of `table` (`None`
    /// for a stored key not in the table's stored format).
    pub fn project(self, table: NexmarkTable, key: &str, value: i64) -> Option<(&str, i64)> {
        match (self, table) {
            (Self::Q5, NexmarkTable::Bid) => key.split(',').next().map(|auction| (auction, value)),
            (Self::Q7, NexmarkTable::Bid) => (key.split(',').count() == 3).then_some((key, value)),
            (Self::Q11 | Self::Q12, NexmarkTable::Bid) => {
                key.split(',').nth(1).map(|bidder| (bidder, value))
            }
            // Persons keep `id,name`, sellers `seller`: the stage tells them
            // apart by the comma.
            (Self::Q8, NexmarkTable::Person) => key.contains(',').then_some((key, value)),
            (Self::Q8, NexmarkTable::Auction) => (!key.contains(',')).then_some((key, value)),
            _ => None,
        }
    }

    /// Turns the window rows of the aggregation into the query's result rows
    /// (CSV lines without line ends), at the same times.
    pub fn finish(self, rows: Stream<'_, u64, Vec<WindowRow>>) -> Stream<'_, u64, Vec<String>> {
        match self {
            Self::Q5 => per_window(rows, HOT_ITEMS),
            Self::Q7 => per_window(rows, HIGHEST_BID),
            Self::Q8 => per_window(rows, NEW_USERS),
            Self::Q11 | Self::Q12 => rows.map(move |row| per_key_line(self, &row)),
        }
    }
}

impl std::fmt::Display for NexmarkQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Appends `field` as one CSV field (quoted when it holds `,`, `"`, CR or LF).
pub fn push_csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// One CSV line of `fields` (quoted where needed), without its line end.
fn line(fields: &[&str]) -> String {
    let mut out = String::with_capacity(64);
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_csv_field(&mut out, field);
    }
    out
}

/// q11 and q12: the key first, then the window or session, then the count.
fn per_key_line(query: NexmarkQuery, row: &WindowRow) -> String {
    debug_assert!(matches!(query, NexmarkQuery::Q11 | NexmarkQuery::Q12));
    line(&[
        &row.key,
        &row.window_start.to_string(),
        &row.window_end.to_string(),
        &row.agg.count.to_string(),
    ])
}

/// q5: each worker keeps its auctions with the most bids in the window;
/// the window's worker keeps those with the most overall.
const HOT_ITEMS: WindowStage = WindowStage {
    name: "HotItems",
    score: Some(|row| Some(i128::from(row.agg.count))),
    route: None,
    finish: hot_items,
};

/// q7: each worker keeps its bids at the window's highest price it saw; the
/// window's worker keeps those at the highest overall.
const HIGHEST_BID: WindowStage = WindowStage {
    name: "HighestBid",
    score: Some(|row| (!row.key.is_empty()).then_some(i128::from(row.agg.max))),
    route: None,
    finish: highest_bid,
};

/// q8: a person and their auctions meet on the worker of (window, person
/// id); the window's result is the union over ids, so no worker sees a whole
/// window.
const NEW_USERS: WindowStage = WindowStage {
    name: "NewUsers",
    score: None,
    route: Some(|row| row.key.split(',').next().unwrap_or("")),
    finish: new_users,
};

/// q5: the auctions whose bid count is the window's largest.
fn hot_items(rows: &[WindowRow], out: &mut Vec<String>) {
    let Some(most) = rows.iter().map(|r| r.agg.count).max() else {
        return;
    };
    for row in rows.iter().filter(|r| r.agg.count == most) {
        out.push(line(&[
            &row.window_start.to_string(),
            &row.window_end.to_string(),
            &row.key,
            &most.to_string(),
        ]));
    }
}

/// q7: every bid at the window's highest price (a key is one distinct
/// `auction,bidder,price`; its count is how many such bids there were).
/// Rows with the empty key aggregate bids a source already knew to be below
/// an accepted bid of the window: they are never results.
fn highest_bid(rows: &[WindowRow], out: &mut Vec<String>) {
    let bids = || rows.iter().filter(|r| !r.key.is_empty());
    let Some(highest) = bids().map(|r| r.agg.max).max() else {
        return;
    };
    for row in bids().filter(|r| r.agg.max == highest) {
        let mut parts = row.key.splitn(3, ',');
        let (auction, bidder) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let text = line(&[
            &row.window_start.to_string(),
            &row.window_end.to_string(),
            auction,
            bidder,
            &highest.to_string(),
        ]);
        for _ in 0..row.agg.count {
            out.push(text.clone());
        }
    }
}

/// q8: persons (keys `id,name`) with an auction (key `seller`) in the
/// window; once per person, with the smallest name if an id registered
/// under several.
fn new_users(rows: &[WindowRow], out: &mut Vec<String>) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let mut sellers: BTreeSet<&str> = BTreeSet::new();
    for row in rows {
        match row.key.split_once(',') {
            Some((id, name)) => {
                let entry = names.entry(id).or_insert(name);
                *entry = (*entry).min(name);
            }
            None => {
                sellers.insert(&row.key);
            }
        }
    }
    let Some(first) = rows.first() else { return };
    let (start, end) = (first.window_start.to_string(), first.window_end.to_string());
    for (id, name) in names {
        if sellers.contains(id) {
            out.push(line(&[&start, &end, id, name]));
        }
    }
}
