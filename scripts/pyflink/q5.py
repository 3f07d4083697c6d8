"""PyFlink side of scripts/bench-pyflink: Nexmark q5 ("hot items") in Flink SQL.

Per hopping window (10 s, sliding by 2 s) of bid event time, the auctions
with the most bids, ties all kept: rows `window_start_ms,window_end_ms,
auction,bids` (weir's q5 columns). Batch mode (the input is bounded: final
rows without retractions), parallelism 1, headerless bid CSV files of
`weir gen nexmark` (auction,bidder,price,channel,url,date_time,extra).

Usage: python q5.py BID_DIR OUTPUT_DIR
"""

import sys

from pyflink.table import EnvironmentSettings, TableEnvironment

src, out = sys.argv[1], sys.argv[2]
env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
env.get_config().set("parallelism.default", "1")
env.get_config().set("table.local-time-zone", "UTC")
env.execute_sql(f"""
CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel STRING,
  url STRING, date_time BIGINT, extra STRING,
  rt AS TO_TIMESTAMP_LTZ(date_time, 3))
WITH ('connector'='filesystem', 'path'='{src}', 'format'='csv')""")
env.execute_sql(f"""
CREATE TABLE sink (ws BIGINT, we BIGINT, auction BIGINT, num BIGINT)
WITH ('connector'='filesystem', 'path'='{out}', 'format'='csv')""")
env.execute_sql("""
CREATE TEMPORARY VIEW counts AS
SELECT window_start, window_end, auction, COUNT(*) AS num
FROM TABLE(HOP(TABLE bid, DESCRIPTOR(rt), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction""")
env.execute_sql("""
INSERT INTO sink
SELECT UNIX_TIMESTAMP(CAST(c.window_start AS STRING)) * 1000,
       UNIX_TIMESTAMP(CAST(c.window_end AS STRING)) * 1000,
       c.auction, c.num
FROM counts c
JOIN (SELECT window_start, window_end, MAX(num) AS maxn FROM counts
      GROUP BY window_start, window_end) m
ON c.window_start = m.window_start AND c.window_end = m.window_end AND c.num = m.maxn""").wait()
