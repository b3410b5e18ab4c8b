#!/usr/bin/env bash
# The wheels bench/gpu_suite.sh needs on the GPU machine (Python 3.12, x86-64, no network), into
# .whl/ (ignored by git). Versions as this project's environment resolves them today.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${GPU_PYTHON_VERSION:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl webdataset==1.0.2 braceexpand==0.1.7 pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
ls -1 .whl
