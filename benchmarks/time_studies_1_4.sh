#!/usr/bin/env bash
# Studies 1-4 at their full sizes (the paper's protocols as README's full-size table states
# them), timed on the 2 cores of a CI-like machine, one thread per worker:
#
#     bash benchmarks/time_studies_1_4.sh [OUT_ROOT]      # default runs/studies_1_4
#
# self_consistency and linear_contrast are one replica batch each, so they share the two
# cores first (one each); elbo_vs_lima and moebius, several settings each, then take both.
# Prints each study's wall time and the total; each study's summary.json keeps its own
# `seconds` and `compute_seconds`. A failed study stops the script (and the other one of the
# pair); a killed run resumes without redoing finished settings.
set -euo pipefail
OUT=${1:-runs/studies_1_4}
PYRO_IMA=${PYRO_IMA:-pyro-ima}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
set -m  # each background study its own process group, so a stop ends its workers too
trap 'for p in $(jobs -p); do kill -- "-$p" 2>/dev/null || true; done' EXIT
trap 'exit 130' INT TERM

study() {  # NAME WORKERS
    local t0=$SECONDS
    "$PYRO_IMA" experiment "$1" --out "$OUT/$1" --quiet --executor processes --workers "$2" \
        --threads-per-worker 1
    echo "$1: $((SECONDS - t0)) s wall"
}

t0=$SECONDS
study self_consistency 1 &
study linear_contrast 1 &
for _ in 1 2; do  # whichever ends first; a failure stops the other (the EXIT trap)
    wait -n || exit $?
done
study elbo_vs_lima 2
study moebius 2
echo "studies 1-4: $((SECONDS - t0)) s wall on 2 cores"
