#!/usr/bin/env bash
# sidecar-rss.sh BIN LABEL: the issue-12 run with checkpoints every 1 s; the
# sidecar's peak RSS (VmHWM) and the number of compactions it committed.
set -euo pipefail
bin=$1 label=$2
W=/work/main/target/bench-large/zipf-20m-2m-uniform
d=/tmp/cp-$label
rm -rf $d /tmp/cpout-$label
mkdir -p $d
$bin ingest --data-dir $d/data $W/csv/*.csv >/dev/null 2>&1
$bin run --query window --input $W/csv --data-dir $d/data --out /tmp/cpout-$label --workers 1 \
  --checkpoint-interval 1s --until-end --window sliding:1h/5m --lateness 1s > $d/run.txt 2>$d/run.err &
run=$!
peak=0
while kill -0 $run 2>/dev/null; do
  for p in $(pgrep -f "$bin sidecar" || true); do
    h=$(awk '/VmHWM/ {print $2}' /proc/$p/status 2>/dev/null || echo 0)
    [[ -n $h && $h -gt $peak ]] && peak=$h
  done
  sleep 0.2
done
wait $run || true
echo "$label: sidecar peak RSS ${peak} KiB"
grep -E '^elapsed|^throughput|checkpoints' $d/run.txt
ls -la $d/data/checkpoints | grep -c base || true
du -sh $d/data/checkpoints
