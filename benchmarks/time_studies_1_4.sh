#!/usr/bin/env bash
# Studies 1-4 at their full sizes (the paper's protocols as README's full-size table states
# them), timed on the 2 cores of a CI-like machine, one thread per study:
#
#     bash benchmarks/time_studies_1_4.sh [OUT_ROOT]      # default runs/studies_1_4
#
# Two lanes, one core each, balanced by the studies' measured compute: linear_contrast then
# elbo_vs_lima on one, self_consistency then moebius on the other (each study's settings one
# after another). Prints each study's wall time and the total; each study's summary.json keeps
# its own `seconds` and `compute_seconds`. A failed study stops the script (and the other
# lane); a killed run resumes without redoing finished settings.
set -euo pipefail
OUT=${1:-runs/studies_1_4}
PYRO_IMA=${PYRO_IMA:-pyro-ima}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
set -m  # each background lane its own process group, so a stop ends its studies too
trap 'for p in $(jobs -p); do kill -- "-$p" 2>/dev/null || true; done' EXIT
trap 'exit 130' INT TERM

study() {  # NAME
    local t0=$SECONDS
    "$PYRO_IMA" experiment "$1" --out "$OUT/$1" --quiet --executor processes --workers 1 \
        --threads-per-worker 1 || return $?  # (set -e does not act inside `lane`'s ||)
    echo "$1: $((SECONDS - t0)) s wall"
}

lane() {  # NAME... one after another; the first failure ends the lane with its status
    for name in "$@"; do
        study "$name" || return $?
    done
}

t0=$SECONDS
lane linear_contrast elbo_vs_lima &
lane self_consistency moebius &
for _ in 1 2; do  # whichever lane ends first; a failure stops the other (the EXIT trap)
    wait -n || exit $?
done
echo "studies 1-4: $((SECONDS - t0)) s wall on 2 cores"
