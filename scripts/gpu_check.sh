#!/usr/bin/env bash
# The GPU check of issue 15 (item 6), prepared to run as is on any machine with an NVIDIA GPU and
# this repository's .venv holding jax[cuda]: in under 5 minutes it
#   1. names the GPU (nvidia-smi) and checks that JAX runs on it (refuses, exit 2, otherwise);
#   2. runs the benchmark harness (scripts/bench.py, full sizes, no compile check) on the GPU:
#      every internal row, and every peer row's jaxviz side; the PyTorch peers run too, on cuda,
#      when the Python used has torch with CUDA (missing peer libraries are skipped per row);
#      the rows are written to $OUT/results.json and results.md as they finish, and the table is
#      printed; comparisons not started within the bench budget are listed as skipped;
#   3. runs scripts/reproduce_figures.py --quick --out /tmp/gpu_gallery.
#
#   scripts/gpu_check.sh                        # .venv/bin/python, results in benchmarks/gpu/
#   scripts/gpu_check.sh --python /work/benchenv/bin/python   # an env with torch: peers on cuda too
#   scripts/gpu_check.sh --only saliency gradcam --no-figures
#   options: --out DIR (results), --gallery DIR, --total S (290), --bench-budget S (140), --quick
#   scripts/gpu_check.sh --allow-cpu --quick --only forward --no-figures   # rehearse the script on a CPU
#
# The numbers are results only from a full run (no --quick) on a GPU the check names; quote them
# with the device line printed first. Exit status: 0 all ran; 1 a step failed; 2 no GPU / bad usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="$ROOT/.venv/bin/python"
OUT="$ROOT/benchmarks/gpu"
GALLERY=/tmp/gpu_gallery
TOTAL=290            # seconds for the whole check (the issue's "under 5 minutes")
BENCH_BUDGET=140     # seconds after which bench.py starts no new comparison
BENCH_LIMIT=180      # hard limit of the bench step (a comparison running at the budget may finish)
                     # the figures get what is left of TOTAL (at least 60 s)
ALLOW_CPU=0
FIGURES=1
QUICK=()
ONLY=()

usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
}

die() {  # one line on stderr, exit status $2 (default 2)
    echo "gpu_check.sh: $1" >&2
    exit "${2:-2}"
}

positive_int() {
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive whole number of seconds, got '$2'"
}

while (($#)); do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --python) (($# >= 2)) || die "--python needs a path"; PYTHON="$2"; shift 2 ;;
        --out) (($# >= 2)) || die "--out needs a folder"; OUT="$2"; shift 2 ;;
        --gallery) (($# >= 2)) || die "--gallery needs a folder"; GALLERY="$2"; shift 2 ;;
        --total) (($# >= 2)) || die "--total needs seconds"; positive_int "$1" "$2"; TOTAL="$2"; shift 2 ;;
        --bench-budget) (($# >= 2)) || die "--bench-budget needs seconds"; positive_int "$1" "$2"
                        BENCH_BUDGET="$2"; BENCH_LIMIT=$(($2 + 40)); shift 2 ;;
        --only) shift; while (($#)) && [[ "$1" != --* ]]; do ONLY+=("$1"); shift; done
                ((${#ONLY[@]})) || die "--only needs comparison names (scripts/bench.py --list)" ;;
        --no-figures) FIGURES=0; shift ;;
        --quick) QUICK=(--quick); shift ;;
        --allow-cpu) ALLOW_CPU=1; shift ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

[[ -x "$PYTHON" ]] || die "no Python at $PYTHON (create the .venv, or give --python PATH)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# 1. the device: nvidia-smi names it; JAX must run on it
echo "== device"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/nvidia-smi: /'
else
    echo "nvidia-smi: no NVIDIA GPU visible (or no driver)"
fi
JAX_DEVICE="$("$PYTHON" - <<'EOF'
import sys
try:
    import jax
    backend, devices = jax.default_backend(), jax.devices()
except Exception as e:  # a CUDA plugin that cannot start says why on one line
    print(f"error: JAX could not start a backend: {' '.join(str(e).split())[:300]}")
    sys.exit(0)
kinds = sorted({d.device_kind for d in devices})
print(f"{backend}: {', '.join(kinds)} x{len(devices)}; jax {jax.__version__}")
EOF
)" || die "could not run $PYTHON"
echo "jax: $JAX_DEVICE"
case "$JAX_DEVICE" in
    gpu:*|cuda:*) ;;
    *) if ((ALLOW_CPU)); then
           echo "gpu_check.sh: no GPU, running on '$JAX_DEVICE' (--allow-cpu: a rehearsal, not a GPU result)"
       else
           die "JAX sees no GPU ($JAX_DEVICE); install jax[cuda12] in the venv on a machine with an NVIDIA GPU (JAX_PLATFORMS unset), or give --python"
       fi ;;
esac

# 2. the harness: peers on cuda when this Python has torch with CUDA, else jaxviz's side alone
PEERS=(--skip-missing-peers)
if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    PEERS+=(--torch-device cuda)
    echo "peers: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') on cuda (rows whose library is missing: jaxviz only)"
elif "$PYTHON" -c "import torch" >/dev/null 2>&1 && ((ALLOW_CPU)); then
    echo "peers: torch on cpu (--allow-cpu rehearsal)"
else
    PEERS=(--jaxviz-only)
    echo "peers: no torch with CUDA in $PYTHON: peer rows time jaxviz's side alone"
fi
mkdir -p "$OUT"
status=0
echo "== bench.py (budget ${BENCH_BUDGET} s, limit ${BENCH_LIMIT} s)"
BENCH=("$PYTHON" scripts/bench.py "${PEERS[@]}" "${QUICK[@]}" --no-compile-check --time-budget "$BENCH_BUDGET"
       --results "$OUT/results.json" --table "$OUT/results.md")
((${#ONLY[@]})) && BENCH+=(--only "${ONLY[@]}")
start=$SECONDS
# SIGINT first: bench.py has written every finished row; KILL 10 s later if it hangs
timeout --signal=INT --kill-after=10 "$BENCH_LIMIT" "${BENCH[@]}" || { rc=$?; status=1
    echo "gpu_check.sh: bench.py failed or ran out of time (exit $rc); rows that finished are in $OUT/results.json" >&2; }
echo "bench.py: $((SECONDS - start)) s"
if [[ -f "$OUT/results.md" ]]; then
    echo "== table ($OUT/results.md; device: $JAX_DEVICE)"
    cat "$OUT/results.md"
else
    echo "gpu_check.sh: no table written" >&2
    status=1
fi

# 3. the figures, quick
if ((FIGURES)); then
    FIGURES_LIMIT=$((TOTAL - SECONDS))
    ((FIGURES_LIMIT >= 60)) || FIGURES_LIMIT=60
    echo "== reproduce_figures.py --quick --out $GALLERY (limit ${FIGURES_LIMIT} s)"
    start=$SECONDS
    timeout --signal=INT --kill-after=10 "$FIGURES_LIMIT" "$PYTHON" scripts/reproduce_figures.py --quick --out "$GALLERY" \
        || { rc=$?; status=1; echo "gpu_check.sh: reproduce_figures.py failed or ran out of time (exit $rc)" >&2; }
    echo "reproduce_figures.py: $((SECONDS - start)) s; gallery: $GALLERY/index.html"
fi
echo "== done in $SECONDS s: device $JAX_DEVICE; $( ((status)) && echo 'SOME STEPS FAILED' || echo 'all steps ran')"
exit "$status"
