"""PyFlink side of scripts/bench-pyflink: Nexmark q5, q7, q8, q11 and q12 in
Flink SQL, giving weir's result columns.

- q5 ("hot items"): per hopping window (10 s, sliding by 2 s) the auctions
  with the most bids, ties kept: `window_start,window_end,auction,num`.
- q7 ("highest bid"): per tumbling 10 s window the bids with the highest
  price, ties kept: `window_start,window_end,auction,bidder,price`.
- q8 (new users): per tumbling 10 s window the persons who registered in it
  and also opened an auction in it: `window_start,window_end,person_id,name`.
- q11 (user sessions): per bidder, sessions of bids closed by a 10 s gap:
  `bidder,session_start,session_end,bid_count` (end: last bid + 10 s).
- q12 (bids per bidder): per tumbling 10 s window and bidder, the number
  of bids: `bidder,window_start,window_end,bid_count`.

Batch mode (the input is bounded: final rows, no retractions from the
joins of window aggregates), except q11: Flink 1.20 runs session windows
in streaming mode only, there with a watermark 60 minutes behind (longer
than the input spans, so no bid is late). Parallelism 1, times in ms, over
headerless CSV files of `weir gen nexmark`: the bids (auction,bidder,price,
channel,url,date_time,extra) in INPUT_DIR, or for q8 the persons and the
auctions in INPUT_DIR/person and INPUT_DIR/auction.

Usage: python nexmark.py q5|q7|q8|q11|q12 INPUT_DIR OUTPUT_DIR
"""

import sys

from pyflink.table import EnvironmentSettings, TableEnvironment

query, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
streaming = query == "q11"
env = TableEnvironment.create(
    EnvironmentSettings.in_streaming_mode() if streaming else EnvironmentSettings.in_batch_mode()
)
env.get_config().set("parallelism.default", "1")
env.get_config().set("table.local-time-zone", "UTC")
watermark = ", WATERMARK FOR rt AS rt - INTERVAL '60' MINUTE" if streaming else ""


def source(name, columns, path):
    """A CSV source table with the event time column `rt` from `date_time`."""
    env.execute_sql(f"""
    CREATE TABLE {name} ({columns}, rt AS TO_TIMESTAMP_LTZ(date_time, 3){watermark})
    WITH ('connector'='filesystem', 'path'='{path}', 'format'='csv')""")


if query == "q8":
    source("person", "id BIGINT, name STRING, email_address STRING, credit_card STRING, "
           "city STRING, state STRING, date_time BIGINT, extra STRING", f"{src}/person")
    source("auction", "id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, "
           "reserve BIGINT, date_time BIGINT, expires BIGINT, seller BIGINT, category BIGINT, "
           "extra STRING", f"{src}/auction")
else:
    source("bid", "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, "
           "date_time BIGINT, extra STRING", src)


def ms(column):
    """A timestamp column as Unix ms (UNIX_TIMESTAMP alone gives seconds)."""
    return (
        f"(UNIX_TIMESTAMP(CAST({column} AS STRING)) * 1000"
        f" + MOD(EXTRACT(MILLISECOND FROM {column}), 1000))"
    )


if query == "q5":
    columns = "ws BIGINT, we BIGINT, auction BIGINT, num BIGINT"
    env.execute_sql("""
    CREATE TEMPORARY VIEW counts AS
    SELECT window_start, window_end, auction, COUNT(*) AS num
    FROM TABLE(HOP(TABLE bid, DESCRIPTOR(rt), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
    GROUP BY window_start, window_end, auction""")
    select = f"""
    SELECT {ms('c.window_start')}, {ms('c.window_end')}, c.auction, c.num
    FROM counts c
    JOIN (SELECT window_start, window_end, MAX(num) AS maxn FROM counts
          GROUP BY window_start, window_end) m
    ON c.window_start = m.window_start AND c.window_end = m.window_end AND c.num = m.maxn"""
elif query == "q7":
    columns = "ws BIGINT, we BIGINT, auction BIGINT, bidder BIGINT, price BIGINT"
    env.execute_sql("""
    CREATE TEMPORARY VIEW windowed AS
    SELECT window_start, window_end, auction, bidder, price
    FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(rt), INTERVAL '10' SECOND))""")
    select = f"""
    SELECT {ms('b.window_start')}, {ms('b.window_end')}, b.auction, b.bidder, b.price
    FROM windowed b
    JOIN (SELECT window_start, window_end, MAX(price) AS maxp FROM windowed
          GROUP BY window_start, window_end) m
    ON b.window_start = m.window_start AND b.window_end = m.window_end AND b.price = m.maxp"""
elif query == "q8":
    columns = "ws BIGINT, we BIGINT, person_id BIGINT, name STRING"
    select = f"""
    SELECT {ms('p.window_start')}, {ms('p.window_end')}, p.id, p.name
    FROM (SELECT window_start, window_end, id, MIN(name) AS name
          FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(rt), INTERVAL '10' SECOND))
          GROUP BY window_start, window_end, id) p
    JOIN (SELECT DISTINCT window_start, window_end, seller
          FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(rt), INTERVAL '10' SECOND))) a
    ON p.window_start = a.window_start AND p.window_end = a.window_end AND p.id = a.seller"""
elif query == "q11":
    columns = "bidder BIGINT, ws BIGINT, we BIGINT, bid_count BIGINT"
    select = f"""
    SELECT bidder, {ms('window_start')}, {ms('window_end')}, COUNT(*)
    FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(rt), INTERVAL '10' SECOND))
    GROUP BY bidder, window_start, window_end"""
elif query == "q12":
    columns = "bidder BIGINT, ws BIGINT, we BIGINT, bid_count BIGINT"
    select = f"""
    SELECT bidder, {ms('window_start')}, {ms('window_end')}, COUNT(*)
    FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(rt), INTERVAL '10' SECOND))
    GROUP BY bidder, window_start, window_end"""
else:
    sys.exit(f"unknown query {query} (q5, q7, q8, q11 or q12)")

# Unquoted, as weir writes a field without a comma, quote or line break
# (q8's names have spaces, which Flink would quote).
env.execute_sql(f"""
CREATE TABLE sink ({columns})
WITH ('connector'='filesystem', 'path'='{out}', 'format'='csv',
      'csv.disable-quote-character'='true')""")
env.execute_sql(f"INSERT INTO sink {select}").wait()
