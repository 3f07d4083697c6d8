#!/bin/bash
# scripts/sidecar-stall.sh (decision 27) WEIR INPUT WINDOW AFTER_S FOR_S : sidecar SIGSTOPped for FOR_S; RSS of the engine sampled every second
W=$1; IN=$2; WIN=$3; AFTER=$4; FOR=$5; shift 5
D=${TMPDIR:-/tmp}/weir-sidecar-stall-$$; rm -rf $D; mkdir -p $D
$W ingest $IN/*.csv --data-dir $D/data >/dev/null 2>&1
$W run --input $IN --data-dir $D/data --out $D/out --window $WIN --until-end --workers 2 --checkpoint-interval 1s --metrics-addr 127.0.0.1:9475 "$@" > $D/stdout 2> $D/stderr &
E=$!
for i in $(seq 1 400); do S=$(pgrep -f "sidecar --exit-when-idle --data-dir $D/data"); [ -n "$S" ] && break; sleep 0.02; done
rss() { awk '/VmRSS/{print $2}' /proc/$E/status 2>/dev/null; }
peak_before=0; t0=$(date +%s.%N)
end=$(echo "$(date +%s.%N) + $AFTER" | bc)
while [ $(echo "$(date +%s.%N) < $end" | bc) = 1 ]; do r=$(rss); [ -n "$r" ] && [ $r -gt $peak_before ] && peak_before=$r; sleep 0.1; done
kill -STOP $S; stop=$(date +%s.%N); echo "stopped at rss_kb=$(rss) (peak before $peak_before)"
first_stalled=""; peak=0
for i in $(seq 1 $((FOR*10))); do sleep 0.1; r=$(rss); [ -n "$r" ] && [ $r -gt $peak ] && peak=$r
  if [ -z "$first_stalled" ] && curl -s 127.0.0.1:9475/metrics | grep -q '^weir_sidecar_stalled 1'; then first_stalled=$(echo "$(date +%s.%N) - $stop" | bc); fi
  if [ $((i % 100)) = 0 ]; then echo "t=$((i/10))s rss_kb=$r $(curl -s 127.0.0.1:9475/metrics | grep -E '^weir_(sidecar_stalled|sources_held|events_in_total|tap_buffer_bytes|checkpoints_uncommitted)' | tr '\n' ' ')"; fi; done
echo "stall reported ${first_stalled}s after SIGSTOP; peak rss during the stall ${peak} kB, peak before ${peak_before} kB"
kill -CONT $S; wait $E; echo "engine exit $?"; grep -E 'events read|elapsed|last checkpoint' $D/stdout; grep -E 'WARN|ERROR' $D/stderr | cut -c1-160 | head -4
echo $D
