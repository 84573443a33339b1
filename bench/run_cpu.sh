#!/usr/bin/env bash
# The whole CPU benchmark suite in one command (sized for a 2-core machine: about 11 minutes there):
#
#   bench/run_cpu.sh [OUT_DIR]          # default bench/results/cpu-<UTC date>
#
# 1. exports the benchmark models at width $BENCH_WIDTH (default 0.125) into $BENCH_MODELS_DIR
#    (default out/bench-models/w<width>) unless they are there already (needs torch, the `bench` extra);
# 2. bench.micro (short cells), bench.http_bench, bench.batching, bench.video_bench, bench.batch_memory,
#    bench.identity_cpu, bench.tracking_bench, bench.load_test (60 s at 6 requests/s), bench.live_load;
# 3. writes OUT_DIR/<name>.json, OUT_DIR/<name>.txt (the printed tables) and OUT_DIR/results.md (all
#    tables, machine, load average before and after, wall time), and prints the tables.
# Logs (Ray's included) go to out/bench-logs/<OUT_DIR name>/. Environment: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WIDTH=${BENCH_WIDTH:-0.125}
MODELS=${BENCH_MODELS_DIR:-out/bench-models/w$WIDTH}
OUT=${1:-bench/results/cpu-$(date -u +%Y-%m-%d)}
LOGS=out/bench-logs/$(basename "$OUT")
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT" "$LOGS"

started=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | wc -l | tr -d ' ')
echo "bench/run_cpu.sh -> $OUT (models $MODELS, width $WIDTH); load average before: $load_before"

# shellcheck source=bench/steps.sh
source bench/steps.sh

if [ ! -f "$MODELS/bench_inswapper.onnx" ] || [ ! -f "$MODELS/bench_arcface.onnx" ] \
    || [ ! -f "$MODELS/bench_gfpgan.onnx" ] || [ ! -f "$MODELS/models.json" ]; then
    "$PY" -c "import torch" 2>/dev/null || {
        echo "benchmark models missing in $MODELS and torch is not installed: pip install -e '.[bench]'" >&2
        exit 1
    }
    step export "$PY" -m bench.export_models "$MODELS" --width "$WIDTH"
fi
cp "$MODELS/models.json" "$OUT/models.json"

step micro "$PY" -m bench.micro --models-dir "$MODELS" --seconds 0.5 --batch-sizes 1,4,16 \
    --max-call-seconds 4 --json "$OUT/micro.json"
step http "$PY" -m bench.http_bench --models-dir "$MODELS" --concurrency 1,4,16 --requests 8,16,32 \
    --json "$OUT/http.json"
step batching "$PY" -m bench.batching --models-dir "$MODELS" --batch-sizes 1,8,16 --concurrency 16 \
    --requests 32 --http-requests 32 --direct-batches 1,4,8,16 --seconds 1 --json "$OUT/batching.json"
step video "$PY" -m bench.video_bench --models-dir "$MODELS" --json "$OUT/video.json"
step memory "$PY" -m bench.batch_memory --models-dir "$MODELS" --lengths 75 300 --json "$OUT/memory.json"
step identity_cpu "$PY" -m bench.identity_cpu --json "$OUT/identity_cpu.json"
step tracking "$PY" -m bench.tracking_bench --json "$OUT/tracking.json"
step load "$PY" -m bench.load_test --rate 6 --requests 360 --concurrency 8 --time-limit-s 75 \
    --memory-every-s 5 --json "$OUT/load.json"
step live "$PY" -m bench.live_load --connections 1 4 --duration 30 --json "$OUT/live.json"

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))
"$PY" - "$OUT" "$load_before" "$load_after" "$elapsed" "$WIDTH" "$commit" "$dirty" <<'EOF'
"""Assemble OUT/results.md from the printed tables and the environment of the first JSON."""
import json
import sys
from pathlib import Path

from bench.common import format_table

out, load_before, load_after, elapsed, width, commit, dirty = Path(sys.argv[1]), *sys.argv[2:]
env = json.loads((out / "micro.json").read_text())["environment"]
models = json.loads((out / "models.json").read_text())["models"]
facts = [
    {**m, "params_m": m["params"] / 1e6, "gmacs": m["macs"] / 1e9, "mb": m["onnx_bytes"] / 1e6} for m in models
]
model_table = format_table(
    facts,
    [("name", "model"), ("width", "width", ".3g"), ("params_m", "params M", ".2f"), ("gmacs", "GMACs", ".3f"),
     ("mb", "ONNX MB", ".1f")],
)
packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
sections = [
    ("Benchmark models", model_table),
    ("Model micro-benchmarks (bench.micro)", (out / "micro.txt").read_text()),
    ("HTTP vs handle vs in-process (bench.http_bench)", (out / "http.txt").read_text()),
    ("Batched vs unbatched swapper (bench.batching)", (out / "batching.txt").read_text()),
    ("Ray Data vs single-process video (bench.video_bench)", (out / "video.txt").read_text()),
    ("Memory against video length (bench.batch_memory)", (out / "memory.txt").read_text()),
    ("Swap by identity against swap by source image (bench.identity_cpu)", (out / "identity_cpu.txt").read_text()),
    ("Face tracking against per-frame detection (bench.tracking_bench)", (out / "tracking.txt").read_text()),
    ("Load held at a bounded rate (bench.load_test)", (out / "load.txt").read_text()),
    ("Live WebSocket connections (bench.live_load)", (out / "live.txt").read_text()),
]
lines = [
    f"# CPU benchmark suite, {env['date_utc'][:10]}",
    "",
    f"- Command: `bench/run_cpu.sh {out}` ({elapsed} s wall for the whole suite), at commit {commit} "
    f"with {dirty} uncommitted path(s) in the tree",
    f"- Device: {env['device']}, {env['memory_gib']} GiB RAM; {env['platform']}; Python {env['python']}",
    f"- Versions: {packages}; providers {', '.join(env['onnxruntime_providers'])}",
    f"- Models: benchmark models (real architectures, random weights) at width {width} of the real "
    "channel counts, plus the real YuNet 2026may detector; see bench/README.md",
    f"- Load average (1/5/15 min) before: {load_before}; after: {load_after} (the suite's own Ray and ONNX "
    "Runtime threads count in it too). Each JSON records it at the start of its step, and http, batching "
    "and video at the end as well.",
    "",
]
for title, body in sections:
    body = "\n".join(line for line in body.splitlines() if not line.startswith("wrote "))
    lines += [f"## {title}", "", "```text", body.rstrip(), "```", ""]
(out / "results.md").write_text("\n".join(lines))
print(f"wrote {out / 'results.md'}")
EOF
echo "load average after: $load_after; total $elapsed s"
