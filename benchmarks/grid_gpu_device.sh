#!/usr/bin/env bash
# Issue 9's and 18's GPU figures in one call of about 7 minutes, for a session that is lent a GPU machine (no network there):
#   bash benchmarks/grid_gpu_device.sh            # from the repository root; writes under $OUT (default results/bench/gpu)
# Where harness's dependencies are missing, carry them as wheels in .whl/ (see the device tool's README): they are
# installed to /tmp/site first. The corpora: HARNESS_DATA_DIR, else .devdata/ if present. On 2026-12-04 the H200's
# image (Python 3.12, torch 2.11) lacked these, 29 MB of wheels, fetched here with the device README's
# `pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl` (without cryptography, cffi and
# pycparser the end-to-end rows fail at MLflow's SQLite store import):
#   alembic cachetools cffi cryptography databricks-sdk fastapi gitdb gitpython google-auth greenlet
#   importlib_metadata mako mlflow mlflow-skinny mlflow-tracing opentelemetry-api opentelemetry-proto
#   opentelemetry-sdk opentelemetry-semantic-conventions pyasn1 pyasn1_modules pycparser pydantic pydantic_core
#   python-dotenv smmap sqlalchemy sqlparse starlette typing-inspection annotated-types uvicorn
#   (the versions of this checkout's .venv; one version of each)
# Each step writes its own CSV and log and is cut at what is left of DEADLINE seconds, so a slow step costs only itself.
START=$SECONDS; DEADLINE=${DEADLINE:-400}; OUT=${OUT:-results/bench/gpu}; mkdir -p "$OUT"
left() { echo $(( DEADLINE - (SECONDS - START) )); }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD
fi
[ -z "${HARNESS_DATA_DIR:-}" ] && [ -d .devdata ] && export HARNESS_DATA_DIR=$PWD/.devdata
export PYTHONUNBUFFERED=1
nvidia-smi -L
step() { local name=$1 cap=$2; shift 2; local t; t=$(left); [ "$t" -gt "$cap" ] && t=$cap
  [ "$t" -lt 20 ] && { echo "== $name: skipped, ${t}s left"; return; }
  echo "== $name (limit ${t}s) at $((SECONDS-START))s"
  timeout "$t" python3 benchmarks/grid_gpu.py --device cuda --out "$OUT/$name.csv" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v Warning
  echo "== $name ended rc=${PIPESTATUS[0]} at $((SECONDS-START))s"; }
# 1. device vs CPU per variant (200 steps, with and without graphs), then the threads levers at 2,000 steps
step levers 80 --seeds 1337 1338 --steps 2000 --check-steps 200 --run-steps 0 \
  --levers graphs,graphs+stacked,graphs+threads,graphs+stacked+threads --threads 8
# 2. the goal: make ablations' 8 variants x 50,000 steps, end to end, threads and graphs
step goal_seed1 80 --levers '' --check-steps 0 --seeds 1337 --run-steps 50000 --jobs 8 --executors threads \
  --set train.cuda_graphs=true
# 3. the same with seeds 1337 and 1338 (16 runs, seeds stacked)
step goal_seed2 120 --levers '' --check-steps 0 --seeds 1337 1338 --run-steps 50000 --jobs 8 --executors threads \
  --set train.cuda_graphs=true
# 4. the GPT (gpt-cpu.yaml, 300 steps): its seeds as one native stack (harness/models/gpt_stack.py) against
#    separate runs, eager and as CUDA graphs, alone and in threads; first 50 steps of each path against the CPU
step gpt 110 --spec experiments/gpt-cpu.yaml --seeds 1337 1338 --check-steps 50 --steps 300 --run-steps 0 \
  --levers sync-free,sync-free+stacked,graphs,graphs+stacked,graphs+threads,graphs+stacked+threads \
  --set train.warmup_steps=10
echo "total $((SECONDS-START))s"
