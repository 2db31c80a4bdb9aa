#!/usr/bin/env bash
# The GPU check (issue 26): every method's paper-profile training and generation steps at full
# architecture with random weights, a few iterations each, on one CUDA device, within 8 minutes;
# then docs/gpu-costs.md from the timings (dermbench.gpucheck, dermbench.gpu_costs).
#
#   bash tests/gpu/check.sh                  # all methods
#   bash tests/gpu/check.sh --only fedd erm  # some of them
#
# Environment: PYTHON (default python), GPU_CHECK_JSON (default gpu-check.json), GPU_CHECK_LIMIT
# (seconds, default 480). Without CUDA it prints one line and exits 2.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
python="${PYTHON:-python}"
json="${GPU_CHECK_JSON:-gpu-check.json}"
limit="${GPU_CHECK_LIMIT:-480}"

status=0
timeout --signal=INT "$limit" "$python" -m dermbench.gpucheck --out "$json" "$@" || status=$?
if [ "$status" -eq 2 ]; then
    exit 2  # no CUDA device: the module printed why
fi
if [ ! -s "$json" ]; then
    echo "dermbench GPU check: no timings were written (exit status $status)" >&2
    exit 1
fi
if [ "$status" -eq 124 ]; then
    echo "dermbench GPU check: stopped after ${limit} s; the steps measured so far are in $json" >&2
fi
"$python" -m dermbench.gpu_costs "$json" docs/gpu-costs.md
echo "wrote docs/gpu-costs.md from $json"
exit "$status"
