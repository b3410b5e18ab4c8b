#!/usr/bin/env bash
# The GPU suite (bench/gpu_suite.py) on a bare GPU machine: Python, torch and torchvision, no
# Ray, MLflow or network. What else its path imports (webdataset, pydantic: pure Python but for
# pydantic-core) travels as wheels in .whl/, which bench/fetch_wheels.sh fills on a machine with
# PyPI; they are installed into /tmp, never into the machine's Python.
#   bench/fetch_wheels.sh             # here, once
#   bench/gpu_suite.sh                # there: one table, and gpu_suite.json in $OUT or bench_out/
#   bench/gpu_suite.sh --tiny         # anywhere: the CPU check that the test suite runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import webdataset, pydantic, yaml" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_suite: $PY lacks webdataset/pydantic and .whl/ holds no wheels: run bench/fetch_wheels.sh" \
         "on a machine with PyPI first" >&2
    exit 2
  fi
  site=$(mktemp -d /tmp/ganforge-site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_suite.py "$@"
