#!/usr/bin/env bash
# The issue-12 run (20M events, 2M keys, sliding 1h/5m, 1 worker, from the
# log, no checkpoints) without and with --memory-budget, alternating.
set -euo pipefail
W=/work/main/target/bench-large/zipf-20m-2m-uniform
out=/work/main/results/spill-issue-run
mkdir -p $out
for round in 1 2; do
  for budget in none 256MiB 200MiB; do
    args=()
    [[ $budget != none ]] && args=(--memory-budget $budget)
    rm -rf /tmp/spout-$budget
    /usr/bin/time -v /tmp/spb/weir run --query window --input $W/csv --data-dir $W/data --out /tmp/spout-$budget \
      --workers 1 --no-checkpoint --until-end --window sliding:1h/5m --lateness 1s "${args[@]}" \
      > $out/run-$round-$budget.txt 2> $out/run-$round-$budget.time
    rss=$(grep 'Maximum resident' $out/run-$round-$budget.time | awk '{print $6}')
    echo "round $round budget $budget: $(grep -E '^throughput' $out/run-$round-$budget.txt) peak RSS $rss KiB; $(grep -E '^window' $out/run-$round-$budget.txt | tr '\n' ' ')"
    if [[ $round == 1 ]]; then
      LC_ALL=C sort -S 3G --parallel=1 /tmp/spout-$budget/windows-*.csv | md5sum > $out/rows-$budget.md5
    fi
    rm -rf /tmp/spout-$budget
  done
done
md5sum $out/rows-*.md5 | head; cat $out/rows-*.md5
