"""PyFlink side of scripts/bench-pyflink: Nexmark q5, q7 and q12 in Flink SQL,
giving weir's result columns.

- q5 ("hot items"): per hopping window (10 s, sliding by 2 s) the auctions
  with the most bids, ties kept: `window_start,window_end,auction,num`.
- q7 ("highest bid"): per tumbling 10 s window the bids with the highest
  price, ties kept: `window_start,window_end,auction,bidder,price`.
- q11 (user sessions): per bidder, sessions of bids closed by a 10 s gap:
  `bidder,session_start,session_end,bid_count` (end: last bid + 10 s).
- q12 (bids per bidder): per tumbling 10 s window and bidder, the number
  of bids: `bidder,window_start,window_end,bid_count`.

Batch mode (the input is bounded: final rows, no retractions from the
joins of window aggregates), except q11: Flink 1.20 runs session windows
in streaming mode only, there with a watermark 60 minutes behind (longer
than the input spans, so no bid is late). Parallelism 1, times in ms, over
headerless bid CSV files of `weir gen nexmark` (auction,bidder,price,
channel,url,date_time,extra).

Usage: python nexmark.py q5|q7|q11|q12 BID_DIR OUTPUT_DIR
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
env.execute_sql(f"""
CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel STRING,
  url STRING, date_time BIGINT, extra STRING,
  rt AS TO_TIMESTAMP_LTZ(date_time, 3)
  {", WATERMARK FOR rt AS rt - INTERVAL '60' MINUTE" if streaming else ""})
WITH ('connector'='filesystem', 'path'='{src}', 'format'='csv')""")


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
    sys.exit(f"unknown query {query} (q5, q7, q11 or q12)")

env.execute_sql(f"""
CREATE TABLE sink ({columns})
WITH ('connector'='filesystem', 'path'='{out}', 'format'='csv')""")
env.execute_sql(f"INSERT INTO sink {select}").wait()
