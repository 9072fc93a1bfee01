"""PCA of a matrix in object storage: scikit-learn's digits as a BigMatrix.

The column means come from ``jw.mean(X, axis=0)`` (streamed), the data is centred with
``jw.map_blocks`` (stored next to the input), ``jw.randomized_svd`` gives the principal
axes and ``jw.var(X, axis=0, ddof=1)`` the total variance; the explained variance is
printed next to
``sklearn.decomposition.PCA(svd_solver="full")`` on the same data in memory.

    python examples/pca.py                          # a temporary file store
    python examples/pca.py --store=s3://bucket/jw --k=12
"""

from __future__ import annotations

import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import argparse
import tempfile

import jax
import numpy as np

import jaxwren as jw


def pca(x: jw.BigMatrix, root: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(components (k, n), explained_variance (k,), explained_variance_ratio (k,))``."""
    m = x.shape[0]
    mean = jw.mean(x, axis=0).reshape(1, -1)  # (1, n) column means, streamed
    xc = jw.map_blocks(lambda xb, mu: xb - mu, x, mean, align=("ij", ".j"), out=f"{root}/Xc")
    _, s, vt = jw.randomized_svd(xc, k, n_oversamples=10, n_iter=4, seed=0)
    total = float(np.sum(jw.var(x, axis=0, ddof=1)))  # the total variance, streamed
    var = np.asarray(s) ** 2 / (m - 1)
    return np.asarray(vt), var, var / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="URL or directory (default: a temp dir)")
    parser.add_argument("--k", type=int, default=10, help="principal components")
    parser.add_argument("--block", type=int, default=256, help="rows per stored block")
    args = parser.parse_args()
    jw.enable_compilation_cache()
    jax.config.update("jax_enable_x64", True)
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    digits = load_digits().data.astype(np.float64)  # 1797 images x 64 pixels
    with tempfile.TemporaryDirectory(prefix="jaxwren-") as tmp:
        root = (args.store or tmp).rstrip("/")
        x = jw.from_numpy(digits, f"{root}/digits", (args.block, digits.shape[1]),
                          overwrite=True)  # fmt: skip
        comps, var, ratio = pca(x, root, args.k)
    ref = PCA(n_components=args.k, svd_solver="full").fit(digits)
    print(f"PCA of digits {digits.shape}, k={args.k}: explained variance (jaxwren | sklearn)")
    for i in range(args.k):
        print(f"  PC{i + 1:<2d} {var[i]:10.4f} | {ref.explained_variance_[i]:10.4f}   ratio "
              f"{ratio[i]:.4f} | {ref.explained_variance_ratio_[i]:.4f}")  # fmt: skip
    rel = np.max(np.abs(var - ref.explained_variance_) / ref.explained_variance_)
    align = np.abs(np.sum(comps * ref.components_, axis=1))  # |cos| of each axis pair
    print(f"max relative difference of the explained variance: {rel:.1e}; "
          f"axes |cos| >= {align.min():.6f}")  # fmt: skip
    if rel > 1e-3:
        sys.exit("explained variance differs from sklearn's by more than 1e-3")


if __name__ == "__main__":
    main()
