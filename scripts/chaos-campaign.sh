#!/usr/bin/env bash
# Runs the chaos scenarios recorded in docs/testing.md, one after another, and prints
# their table rows. Usage: scripts/chaos-campaign.sh [DURATION_SECONDS]
set -uo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
npx tsc -p tsconfig.json
all=kill,kill-leader,pause,partition,isolate-leader,bridge,one-way,slow-links,transfer-leader,member-churn
# seed nodes faults
scenarios=(
  "101 3 $all" "102 3 $all" "103 3 kill,kill-leader" "104 3 pause" "105 3 partition,isolate-leader"
  "106 3 one-way,slow-links" "107 3 $all" "108 3 kill-leader,pause,isolate-leader,transfer-leader,member-churn" "109 3 $all" "110 3 $all"
  "201 5 $all" "202 5 $all" "203 5 bridge" "204 5 kill,kill-leader,member-churn" "205 5 pause,partition"
  "206 5 one-way,slow-links" "207 5 bridge,isolate-leader" "208 5 $all" "209 5 $all" "210 5 $all"
)
failed=0
for s in "${scenarios[@]}"; do
  read -r seed nodes faults <<<"$s"
  out="chaos-out/campaign/seed-$seed-n$nodes"
  node dist/test/chaos/run.js --duration "$duration" --nodes "$nodes" --seed "$seed" --faults "$faults" --out "$out" > "$out.txt" 2>&1 || failed=$((failed + 1))
  node -e '
    const s = require(process.argv[1]);
    const faults = Object.entries(s.faultsApplied).map(([k, v]) => `${k}×${v}`).join(", ");
    console.log(`| ${s.options.seed} | ${s.options.nodes} | ${s.options.durationSec} s | ${faults} | ${s.ops} | ${s.unknownOps} | ${s.lost} | ${s.ok ? "linearizable, identical data" : "FAILED: " + s.linearizable} |`);
  ' "$PWD/$out/summary.json" 2>/dev/null || echo "| $seed | $nodes | $duration s | $faults | - | - | - | FAILED to run (see $out.txt) |"
done
echo "failed scenarios: $failed"
