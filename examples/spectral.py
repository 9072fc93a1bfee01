"""Spectral clustering from a stored affinity matrix with jw.eigh, next to scikit-learn.

Points from ``sklearn.datasets.make_blobs`` are stored; their RBF affinity ``W`` is built
in the store (``jw.pairwise_sq_distances``, then ``jw.map_blocks``), normalised to
``D^-1/2 W D^-1/2`` with the degrees from ``jw.sum`` (the leading eigenvectors of that
matrix are the trailing ones of the normalised Laplacian), and decomposed whole by
``jw.eigh`` (QDWH-eig spectral divide and conquer on the device mesh, stored). The top
``k`` eigenvectors, row-normalised, are clustered by k-means, as
``sklearn.cluster.SpectralClustering(affinity="precomputed")`` does on the same ``W`` in
memory; the script prints both adjusted Rand indices and how far jw.eigh's spectrum is
from ``numpy.linalg.eigh``'s.

    python examples/spectral.py                     # a temporary file store
    python examples/spectral.py --store=s3://bucket/jw --points=2000
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
import jax.numpy as jnp
import numpy as np

import jaxwren as jw


def normalized_affinity(x: jw.BigMatrix, root: str, gamma: float) -> jw.BigMatrix:
    """``D^-1/2 W D^-1/2`` with ``W = exp(-gamma |x_i - x_j|^2)``, built in the store."""
    d2 = jw.pairwise_sq_distances(x, x, f"{root}/D2")
    w = jw.map_blocks(lambda b: jnp.exp(-gamma * jnp.maximum(b, 0)), d2, out=f"{root}/W")
    deg = np.asarray(jw.sum(w, axis=1), np.float64)
    r = (1 / np.sqrt(deg)).reshape(-1, 1)
    return jw.map_blocks(lambda b, ri, rj: ri * b * rj, w, r, r.T, align=("ij", "i.", ".j"),
                         out=f"{root}/M")  # fmt: skip


def spectral_clusters(m: jw.BigMatrix, root: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, eigenvalues)``: k-means on the top-``k`` eigenvectors of ``m``."""
    from sklearn.cluster import KMeans

    w, v = jw.eigh(m, f"{root}/eig")  # every eigenpair, V stored
    emb = v.numpy()[:, -k:]  # the k largest eigenvalues of M: the smallest of the Laplacian
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(emb)
    return labels, np.asarray(w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="URL or directory (default: a temp dir)")
    parser.add_argument("--points", type=int, default=1200, help="points (the matrix size)")
    parser.add_argument("--k", type=int, default=4, help="clusters")
    parser.add_argument("--block", type=int, default=256, help="stored block size")
    args = parser.parse_args()
    jw.enable_compilation_cache()
    jax.config.update("jax_enable_x64", True)
    from sklearn.cluster import SpectralClustering
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    pts, truth = make_blobs(args.points, n_features=8, centers=args.k, cluster_std=2.0,
                            random_state=0)  # fmt: skip
    gamma = 0.05
    with tempfile.TemporaryDirectory(prefix="jaxwren-") as tmp:
        root = (args.store or tmp).rstrip("/")
        x = jw.from_numpy(pts, f"{root}/points", (args.block, pts.shape[1]), overwrite=True)
        m = normalized_affinity(x, root, gamma)
        labels, w = spectral_clusters(m, root, args.k)
        dense = m.numpy()
    ref = SpectralClustering(args.k, affinity="precomputed", random_state=0)
    ref_labels = ref.fit_predict(np.exp(-gamma * np.sum((pts[:, None] - pts[None]) ** 2, -1)))
    err = np.max(np.abs(w - np.linalg.eigvalsh(dense)))
    ours, theirs = adjusted_rand_score(truth, labels), adjusted_rand_score(truth, ref_labels)
    print(
        f"spectral clustering of {args.points} points, k={args.k}: adjusted Rand index "
        f"jaxwren {ours:.4f} | sklearn {theirs:.4f}; eigenvalues vs numpy: {err:.1e}"
    )
    if err > 1e-10 or ours < theirs - 0.02:
        sys.exit("jw.eigh's clustering or spectrum differs from the references")


if __name__ == "__main__":
    main()
