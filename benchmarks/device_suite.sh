#!/usr/bin/env bash
# The prepared accelerator run (issue 22 part 7): matmul, Cholesky in-core and out-of-core,
# kNN, TSQR and randomized SVD at sizes that fill one GPU, each binary with its peers in
# the same run (jnp on the one device where the binary has that peer: matmul's `jax`,
# Cholesky's `jax_sharded`, jaxnative's `jnp_one`), one JSON file at the end.
#
#   benchmarks/device_suite.sh [OUT.json]          # GPU sizes, ~6-8 minutes on one H100
#   SIZE=smoke benchmarks/device_suite.sh out.json # tiny sizes: checks the script on CPU
#
# Every binary runs under `timeout` so the whole suite stays under 8 minutes; a binary
# that times out or fails is recorded as such in the JSON (its "error" entry) and the
# suite goes on. Nothing in jaxwren depends on a GPU: on CPU the same commands run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-device_suite.json}
SIZE=${SIZE:-gpu}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [ "$SIZE" = smoke ]; then
  LIMIT=120
  RUNS=(
    "matmul|benchmarks.matmul --n=512 --block=128 --peers=numpy,jax --repeats=1"
    "cholesky|benchmarks.cholesky --n=1024 --block=128 --peers=numpy,jax_sharded --modes=jaxwren_store,jaxwren_incore --ooc_fractions=4 --repeats=1"
    "knn|benchmarks.knn --n_data=2000 --n_queries=500 --dim=32 --block=500 --repeats=1"
    "tsqr|benchmarks.qr --m=20000 --n=16 --block_rows=2500 --peers=numpy --repeats=1"
    "rsvd|benchmarks.svd --m=2000 --n=400 --k=10 --rank=40 --block_rows=500 --peers=sklearn --repeats=1"
    "lax|benchmarks.jaxnative --n=256 --repeats=1"
  )
else
  LIMIT=110
  RUNS=(
    "matmul|benchmarks.matmul --n=16384 --block=4096 --dtype=float32 --peers=jax --repeats=2"
    "cholesky|benchmarks.cholesky --n=16384 --block=4096 --dtype=float32 --peers=jax_sharded --modes=jaxwren_store,jaxwren_incore --ooc_fractions=4 --repeats=2"
    "knn|benchmarks.knn --n_data=200000 --n_queries=20000 --dim=784 --block=20000 --peers=numpy --repeats=2"
    "tsqr|benchmarks.qr --m=4000000 --n=64 --block_rows=250000 --peers=numpy --repeats=2"
    "rsvd|benchmarks.svd --m=200000 --n=4000 --k=50 --block_rows=20000 --peers=sklearn --repeats=2"
    "lax|benchmarks.jaxnative --n=16384 --dtype=float32 --repeats=2"
  )
fi

for entry in "${RUNS[@]}"; do
  name=${entry%%|*}
  cmd=${entry#*|}
  echo "== $name: python -m $cmd"
  # shellcheck disable=SC2086
  timeout "$LIMIT" python -m $cmd --json_out="$TMP/$name.jsonl" >"$TMP/$name.log" 2>&1
  echo "$?" >"$TMP/$name.rc"
  tail -n 15 "$TMP/$name.log"
done

python - "$TMP" "$OUT" "$SIZE" "${RUNS[@]}" <<'PY'
import json, pathlib, platform, sys, time
tmp, out, size, runs = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
try:
    import jax
    devices = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
except Exception as e:  # the suite still writes what it has
    devices = [f"unknown ({e})"]
suite = {"size": size, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
         "devices": devices, "runs": []}
for entry in runs:
    name, cmd = entry.split("|", 1)
    rc = int((tmp / f"{name}.rc").read_text())
    lines = (tmp / f"{name}.jsonl").read_text().splitlines() if (tmp / f"{name}.jsonl").exists() else []
    run = {"name": name, "command": f"python -m {cmd}", "rc": rc,
           "results": [json.loads(line) for line in lines if line.strip()]}
    if rc != 0:
        run["error"] = "timed out" if rc == 124 else (tmp / f"{name}.log").read_text()[-2000:]
    suite["runs"].append(run)
pathlib.Path(out).write_text(json.dumps(suite, indent=1))
print(f"wrote {out}: " + ", ".join(f"{r['name']} rc={r['rc']} ({len(r['results'])} results)"
                                  for r in suite["runs"]))
PY
