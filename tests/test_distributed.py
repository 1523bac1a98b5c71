"""The dataset scan across processes with ``jax.distributed`` (issue 15 item 5).

Two Python processes on this machine join one JAX cluster over localhost
(``jax.distributed.initialize``, CPU collectives via gloo), each scans its contiguous shard of the
same image list (``shard=(jax.process_index(), jax.process_count())``, its own local device),
they exchange their image counts and a weights checksum with a real cross-process collective
(``multihost_utils.process_allgather``), wait at a barrier, and process 0 merges the two INDEX
folders from the shared file system (``merge_indices``). The merged index must equal a
one-process scan of all images: values, image indices, positions, features, paths.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_model

from jaxviz.images import save_image
from jaxviz.scan import shard_range
from jaxviz.scan_index import read_index, scan

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
LAYERS = ["features.1", "features.4"]  # a ReLU output (exact ties at 0) and the last ReLU
TOPK, BATCH = 4, 4

# One process of the cluster: argv[1] is a JSON object {coordinator, process_id, sources, out}.
WORKER = r"""
import json, sys
args = json.loads(sys.argv[1])
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
jax.distributed.initialize(coordinator_address=args["coordinator"], num_processes=2,
                           process_id=args["process_id"], initialization_timeout=60)
import numpy as np
from jax.experimental import multihost_utils

sys.path.insert(0, args["tests"])
from conftest import make_tiny_model
from jaxviz.scan_index import merge_indices, scan

me, n = jax.process_index(), jax.process_count()
model = make_tiny_model()
part = scan(model, args["sources"], f"{args['out']}/part{me}", layers=args["layers"], topk=args["topk"],
            batch=args["batch"], shard=(me, n))
# a real collective over the two processes: each one's (process index, images scanned, first
# global image index, weights checksum), gathered on both
checksum = float(sum(np.abs(np.asarray(p, np.float64)).sum() for p in jax.tree.leaves(model.params)))
mine = np.array([me, part.meta["count"], int(part.indices[0]), checksum], np.float64)
gathered = np.asarray(multihost_utils.process_allgather(mine))
multihost_utils.sync_global_devices("shards written")  # both INDEX folders complete before the merge
merged = None
if me == 0:  # any one host merges, from the shared file system
    merged = str(merge_indices([f"{args['out']}/part{i}" for i in range(n)], f"{args['out']}/merged").path)
multihost_utils.sync_global_devices("merged")
print(json.dumps({"process_index": me, "process_count": n, "devices": len(jax.devices()),
                  "local_devices": len(jax.local_devices()), "gathered": gathered.tolist(),
                  "shard": part.meta["shard"], "count": part.meta["count"], "merged": merged}), flush=True)
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[str]:
    """11 random non-square images (PNG and JPEG): unequal shards, a partial last batch each."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(11):
        h, w = rng.integers(12, 40, size=2)
        path = root / f"img{i:02d}.{'jpg' if i % 3 == 0 else 'png'}"
        save_image(rng.random((h, w, 3)) ** rng.uniform(0.3, 3), path)
        paths.append(str(path))
    return paths


def _start_cluster(sources: list[str], out: Path) -> list[subprocess.Popen]:
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one local CPU device each
    env.update(JAX_PLATFORMS="cpu", JAXVIZ_CACHE_DIR="off", PYTHONPATH=os.pathsep.join(
        [str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    procs = []
    for i in range(2):
        args = {"coordinator": coordinator, "process_id": i, "sources": sources, "out": str(out),
                "layers": LAYERS, "topk": TOPK, "batch": BATCH, "tests": str(TESTS)}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(args)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _results(procs: list[subprocess.Popen], timeout: float = 150) -> list[dict]:
    results = []
    for i, p in enumerate(procs):
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"process {i} failed (exit {p.returncode}):\n{stderr[-3000:]}"
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:  # a failed or hung peer must not outlive the test
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_two_process_scan_merged_equals_one_scan(sources, tmp_path):
    procs = _start_cluster(sources, tmp_path / "cluster")
    try:
        # the one-process reference scan runs while the cluster works
        single = scan(make_tiny_model(), sources, tmp_path / "single", layers=LAYERS, topk=TOPK, batch=BATCH)
        results = _results(procs)
    finally:
        _stop(procs)

    # jax.distributed really formed one cluster of two processes, one CPU device each
    for i, r in enumerate(results):
        assert (r["process_index"], r["process_count"]) == (i, 2)
        assert (r["devices"], r["local_devices"]) == (2, 1)
        assert r["shard"] == [i, 2]
    # the all-gather crossed processes: both saw both rows, in process order
    gathered = [np.array(r["gathered"]) for r in results]
    np.testing.assert_array_equal(gathered[0], gathered[1])
    g = gathered[0]
    assert g.shape == (2, 4) and list(g[:, 0]) == [0, 1]
    ranges = [shard_range(len(sources), (i, 2)) for i in range(2)]     # [0, 5), [5, 11)
    assert ranges[0][1] == ranges[1][0] and ranges[1][1] == len(sources)
    assert list(g[:, 1]) == [hi - lo for lo, hi in ranges]              # disjoint shards cover the list
    assert list(g[:, 2]) == [lo for lo, _ in ranges]                    # contiguous, in process order
    assert g[0, 3] == g[1, 3] > 0                                       # the same weights on both hosts
    assert results[0]["merged"] and results[1]["merged"] is None

    merged = read_index(results[0]["merged"])
    assert merged.meta["count"] == single.meta["count"] == len(sources)
    assert merged.meta["shard"] == [0, 1] and merged.meta["layers"] == single.meta["layers"]
    assert merged.paths == single.paths == sources
    np.testing.assert_array_equal(merged.indices, single.indices)
    for layer in LAYERS:
        a, b = merged.topk[layer], single.topk[layer]
        assert a.values.shape == b.values.shape == (a.values.shape[0], TOPK)
        for name in ("image", "y", "x"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{layer} {name}")
        # the same compiled step on other batch compositions: equal up to float rounding
        np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-6, err_msg=layer)
    np.testing.assert_allclose(merged.features, single.features, rtol=1e-6, atol=1e-6)
    # both shards contributed to the merged top-k (the test would be vacuous otherwise)
    images = np.concatenate([merged.topk[layer].image.ravel() for layer in LAYERS])
    assert (images < ranges[1][0]).any() and (images >= ranges[1][0]).any()
