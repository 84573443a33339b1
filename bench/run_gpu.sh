#!/usr/bin/env bash
# The GPU benchmark suite in one command, for the lent GPU machine (H100/H200; see ../shared/gpu/README.md):
# micro (each model alone at batch 1..32), http (Serve graph vs in-process, concurrency 1/4/16/64) and video
# (Ray Data job vs single-process loop), all with onnxruntime-gpu's CUDA execution provider (strict: a
# session that falls back to CPU is an error, not a slow number). Sized to finish within 8 minutes.
#
#   bench/run_gpu.sh [OUT_DIR]                 # default $OUT (the device machine's) or bench/results/gpu-<date>
#
# Before it: on this machine, ../shared/gpu/make-bundle.sh ort onnxruntime-gpu==1.31.1 and
# ../shared/gpu/make-bundle.sh serve "ray[serve,data]==2.60.0" starlette pydantic python-multipart httpx av tqdm,
# then one device call per part (`mkdir -p /tmp/dv/NAME && cp .device/NAME/pK/* /tmp/dv/NAME/`), back to back
# while the machine is warm. This script unpacks what /tmp/dv holds, installs it into /tmp/site, checks that
# CUDA is active, exports the full-width benchmark models with the machine's own PyTorch (too big to carry) and
# runs the suite. Environment: PYTHON (default python3), BENCH_WIDTH (default 1.0), SKIP_INSTALL=1 to reuse
# /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WIDTH=${BENCH_WIDTH:-1.0}
OUT=${1:-${OUT:-bench/results/gpu-$(date -u +%Y-%m-%d)}}
MODELS=out/bench-models/w$WIDTH
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"

if [ -z "${SKIP_INSTALL:-}" ]; then
    for bundle in /tmp/dv/*/; do
        [ -e "$bundle/part.00" ] || continue
        (cd "$bundle" && cat part.* | "$OLDPWD/.device/bin/zstd" -dq | tar x)
    done
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/dv/*/w/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia_libs=$(ls -d /opt/torch/.venv/lib/python3.12/site-packages/nvidia/*/lib 2>/dev/null | tr "\n" ":")
export LD_LIBRARY_PATH=${nvidia_libs}${LD_LIBRARY_PATH:-}
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy:middlewares

started=$(date +%s)
"$PY" - <<'EOF' | tee "$OUT/device.txt"
import onnxruntime as ort, subprocess
providers = ort.get_available_providers()
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
print(f"GPU: {gpu}; onnxruntime {ort.__version__}; providers {providers}")
assert providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider"), "CUDA is not active"
EOF

# shellcheck source=bench/steps.sh
source bench/steps.sh

[ -f "$MODELS/bench_inswapper.onnx" ] || step export "$PY" -m bench.export_models "$MODELS" --width "$WIDTH" --no-verify
step micro "$PY" -m bench.micro --models-dir "$MODELS" --providers cuda --seconds 1 --batch-sizes 1,8,32 \
    --json "$OUT/micro.json"
step http "$PY" -m bench.http_bench --models-dir "$MODELS" --providers cuda --concurrency 1,4,16,64 \
    --requests 32,64,128,256 --num-cpus 16 --json "$OUT/http.json"
step video "$PY" -m bench.video_bench --models-dir "$MODELS" --providers cuda --json "$OUT/video.json"
echo "GPU suite: $(($(date +%s) - started)) s; tables and JSON in $OUT"
