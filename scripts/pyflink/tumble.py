"""PyFlink side of scripts/bench-pyflink: weir's generic query in Flink SQL.

Tumbling 10 s event-time windows per key with count, sum, min and max of
the value, over headerless CSV files `ts,key,value`, a bounded-out-of-
orderness watermark of LATENESS_MINUTES, parallelism 1, written as CSV
rows `window_start_ms,window_end_ms,key,count,sum,min,max` (weir's
windows.csv columns) by the filesystem sink.

Usage: python tumble.py INPUT_DIR OUTPUT_DIR LATENESS_MINUTES
"""

import sys

from pyflink.table import EnvironmentSettings, TableEnvironment

src, out, lateness_minutes = sys.argv[1], sys.argv[2], int(sys.argv[3])
env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
env.get_config().set("parallelism.default", "1")
env.get_config().set("table.local-time-zone", "UTC")
env.execute_sql(f"""
CREATE TABLE events (ts BIGINT, k STRING, v BIGINT,
  rt AS TO_TIMESTAMP_LTZ(ts, 3),
  WATERMARK FOR rt AS rt - INTERVAL '{lateness_minutes}' MINUTE)
WITH ('connector'='filesystem', 'path'='{src}', 'format'='csv')""")
env.execute_sql(f"""
CREATE TABLE sink (ws BIGINT, we BIGINT, k STRING, c BIGINT, s BIGINT, mn BIGINT, mx BIGINT)
WITH ('connector'='filesystem', 'path'='{out}', 'format'='csv')""")
env.execute_sql("""
INSERT INTO sink
SELECT UNIX_TIMESTAMP(CAST(window_start AS STRING)) * 1000,
       UNIX_TIMESTAMP(CAST(window_end AS STRING)) * 1000,
       k, COUNT(*), SUM(v), MIN(v), MAX(v)
FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(rt), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, k""").wait()
