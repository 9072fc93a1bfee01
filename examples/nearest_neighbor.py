"""The PyWren notebook's nearest-neighbour workflow on real data (scikit-learn's digits).

Stores the training and test sets as BigMatrix objects, classifies the test set by 1-NN
two ways — the notebook's materialised distance matrix D (``pairwise_sq_distances``) and
a per-row ``argmin``, and the fused ``nearest_neighbors`` that never materialises D —
and prints the accuracy next to sklearn's ``KNeighborsClassifier(algorithm="brute")``;
then the training 1-NN (every point is its own nearest neighbour: 100%) and the
leave-one-out accuracy (``exclude_self=True``). ``--k`` votes among k neighbours.

    python examples/nearest_neighbor.py
    python examples/nearest_neighbor.py --k=5
    python examples/nearest_neighbor.py --store=/data/jw          # a directory of your choice
    python examples/nearest_neighbor.py --store=s3://bucket/jw    # any S3 endpoint
        (AWS_ENDPOINT_URL_S3=http://127.0.0.1:9000 for MinIO; credentials as for the AWS SDK)
"""

from __future__ import annotations

import os
import sys

# Without an accelerator, emulate 8 CPU devices so the sharding is real (before jax starts).
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import argparse
import contextlib
import tempfile
import time

import jax
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

import jaxwren as jw


@contextlib.contextmanager
def step(name: str):
    t0 = time.perf_counter()
    yield
    print(f"  {name:<68s} {time.perf_counter() - t0:8.3f} s")


def vote(labels: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Majority vote of the neighbours' labels; a tie goes to the smallest label (as
    sklearn's uniform-weight KNeighborsClassifier)."""
    votes = labels[neighbours]
    counts = np.stack([np.sum(votes == c, axis=1) for c in range(labels.max() + 1)], axis=1)
    return counts.argmax(axis=1)


def run(root: str, k: int, block: int) -> None:
    digits = load_digits()
    x = digits.data.astype(np.float32)  # 8x8 images, pixel values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.2, random_state=0)
    print(f"jaxwren nearest neighbours: digits {x_tr.shape[0]} train / {x_te.shape[0]} test, "
          f"{x.shape[1]} features, k={k}, store={root}")  # fmt: skip
    print(f"  devices: {len(jax.devices())} x {jax.devices()[0].platform}")
    with step("store train and test as BigMatrix (from_numpy)"):
        train = jw.from_numpy(x_tr, f"{root}/train", (block, x.shape[1]), overwrite=True)
        test = jw.from_numpy(x_te, f"{root}/test", (block, x.shape[1]), overwrite=True)
    print(f"    {train}\n    {test}")

    with step("two-step: D = jw.pairwise_sq_distances(test, train) -> store"):
        d = jw.pairwise_sq_distances(test, train, f"{root}/D")
    print(f"    {d}")
    with step("two-step: jw.argmin(D, axis=1)"):
        idx_two, _ = jw.argmin(d, axis=1)
        idx_two = np.asarray(idx_two)
    with step(f"fused: jw.nearest_neighbors(test, train, k={k})"):
        nn, _ = jw.nearest_neighbors(test, train, k)
        nn = np.asarray(nn)
    with step("sklearn KNeighborsClassifier(algorithm='brute')"):
        sk1 = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(x_tr, y_tr)
        skk = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(x_tr, y_tr)
        pred_sk1, pred_skk = sk1.predict(x_te), skk.predict(x_te)

    acc = {
        "1-NN, materialised D + argmin": np.mean(y_tr[idx_two] == y_te),
        "1-NN, fused nearest_neighbors": np.mean(y_tr[nn[:, 0]] == y_te),
        "1-NN, sklearn brute": np.mean(pred_sk1 == y_te),
    }
    if k > 1:
        acc[f"{k}-NN vote, fused nearest_neighbors"] = np.mean(vote(y_tr, nn) == y_te)
        acc[f"{k}-NN vote, sklearn brute"] = np.mean(pred_skk == y_te)
    print("  test accuracy:")
    for name, a in acc.items():
        print(f"    {name:<40s} {100 * a:6.2f} %")

    with step("training 1-NN: jw.nearest_neighbors(train, train)"):
        self_nn, self_d = jw.nearest_neighbors(train, train, 1)
    train_acc = np.mean(y_tr[np.asarray(self_nn)[:, 0]] == y_tr)
    with step(f"leave-one-out: jw.nearest_neighbors(train, train, {k}, exclude_self=True)"):
        loo, _ = jw.nearest_neighbors(train, train, k, exclude_self=True)
    loo_acc = np.mean(vote(y_tr, np.asarray(loo)) == y_tr)
    print(f"    training 1-NN accuracy                   {100 * train_acc:6.2f} %")
    print(f"    leave-one-out {k}-NN accuracy              {100 * loo_acc:6.2f} %")

    problems = []
    if not np.array_equal(idx_two, nn[:, 0]):
        problems.append("the two-step and fused 1-NN disagree")
    if train_acc != 1.0 or np.any(np.asarray(self_d) != 0):
        problems.append(f"training 1-NN is {100 * train_acc:.2f}%, not 100%")
    if abs(acc["1-NN, fused nearest_neighbors"] - acc["1-NN, sklearn brute"]) > 0.01:
        problems.append("the 1-NN accuracy differs from sklearn's by more than 1%")
    if problems:
        sys.exit("nearest_neighbor: " + "; ".join(problems))
    print("done.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="URL or directory (default: a temp dir)")
    parser.add_argument("--k", type=int, default=1, help="neighbours voting (default 1)")
    parser.add_argument("--block", type=int, default=256, help="rows per stored block")
    args = parser.parse_args()
    jw.enable_compilation_cache()  # a second run loads its kernels from disk
    if args.store:
        run(args.store.rstrip("/"), args.k, args.block)
    else:
        with tempfile.TemporaryDirectory(prefix="jaxwren-") as tmp:
            run(tmp, args.k, args.block)


if __name__ == "__main__":
    main()
