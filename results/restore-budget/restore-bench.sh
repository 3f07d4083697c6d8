#!/usr/bin/env bash
# Restore peak RSS with --memory-budget: one checkpointed run of the issue-12
# input killed (-9) at ~25 s, its data dir copied, then each binary restarts
# from a copy and runs to the end.
set -uo pipefail
W=/work/main/target/bench-large/zipf-20m-2m-uniform
B=/tmp/rb
rm -rf $B; mkdir -p $B
/tmp/spn/weir ingest --data-dir $B/data $W/csv/*.csv >/dev/null 2>&1
args=(--query window --input $W/csv --out $B/out --workers 1 --checkpoint-interval 1s --until-end --window sliding:1h/5m --lateness 1s --memory-budget 256MiB)
/tmp/spn/weir run --data-dir $B/data "${args[@]}" > $B/first.txt 2>&1 &
pid=$!
sleep 25
pkill -9 -f "$B/data" ; wait $pid 2>/dev/null
sleep 1
/tmp/spn/weir inspect --data-dir $B/data | grep -A2 '^checkpoints' | head -3
for v in spb spn; do
  rm -rf $B/data-$v $B/out-$v; cp -r $B/data $B/data-$v; cp -r $B/out $B/out-$v
done
for v in spb spn; do
  /usr/bin/time -v /tmp/$v/weir run --data-dir $B/data-$v "${args[@]/$B\/out/$B/out-$v}" > $B/$v.txt 2> $B/$v.time
  echo "$v: $(grep -m1 'Maximum resident' $B/$v.time)  $(grep -E '^elapsed|restored' $B/$v.txt | tr '\n' ' ')"
  grep -i 'restor' $B/$v.time | grep -v '^\s*$' | tail -2 | cut -c1-200
done
