"""Exact Gaussian-process regression on a sharded kernel matrix, differentiated end to end.

The negative log marginal likelihood of an RBF + noise GP,

    nll(theta) = 1/2 y^T K^-1 y + 1/2 log det K + n/2 log(2 pi),
    K = s exp(-|x - x'|^2 / (2 l^2)) + v I,   theta = (log l, log s, log v),

is computed inside ``jax.jit`` with ``jaxwren.lax.cholesky`` / ``cho_solve`` /
``cho_logdet`` on an ``n x n`` kernel matrix sharded ``P('rows', 'cols')`` over the device
mesh (each device builds only its block of ``K``; nothing gathers it), and its gradient
with respect to ``theta`` comes from ``jax.value_and_grad`` through the sharded kernels.
The data are a draw from a GP with a known length-scale (random Fourier features); a few
gradient steps move the hyperparameters towards it. Up to ``--check_max_n`` the
likelihood and its gradient are compared with scikit-learn's
``GaussianProcessRegressor(kernel=C * RBF + WhiteKernel, optimizer=None)`` and with the
same function written with ``jnp.linalg`` on one device.

    python examples/gaussian_process.py                    # n = 2000, 5 steps
    python examples/gaussian_process.py --n=16384 --steps=2 --check_max_n=0
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import argparse
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxwren as jw
import jaxwren.lax as wl
from jaxwren.engine.lapack_threads import single_threaded_blas

TRUE = {"length_scale": 0.3, "signal_var": 1.5, "noise_var": 0.05}


def make_data(n: int, dim: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points in ``[0, 1]^dim`` and targets drawn from a GP with the ``TRUE``
    hyperparameters (2000 random Fourier features of the RBF kernel, plus noise)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, dim))
    feats = 2000
    omega = rng.standard_normal((dim, feats)) / TRUE["length_scale"]
    phase = rng.uniform(0, 2 * np.pi, feats)
    w = rng.standard_normal(feats)
    f = np.sqrt(2 * TRUE["signal_var"] / feats) * np.cos(x @ omega + phase) @ w
    return x, f + np.sqrt(TRUE["noise_var"]) * rng.standard_normal(n)


def kernel_matrix(theta: jax.Array, x: jax.Array, sharding: Any = None) -> jax.Array:
    """``K(theta)`` for points ``x`` (``n x dim``); with ``sharding``, each device computes
    only its block (a sharding constraint on the result)."""
    ell, s, v = jnp.exp(theta[0]), jnp.exp(theta[1]), jnp.exp(theta[2])
    xs = x / ell
    sq = sum((xs[:, None, k] - xs[None, :, k]) ** 2 for k in range(x.shape[1]))
    if sharding is not None:
        sq = jax.lax.with_sharding_constraint(sq, sharding)
    eye = jnp.arange(x.shape[0])[:, None] == jnp.arange(x.shape[0])[None, :]
    return s * jnp.exp(-0.5 * sq) + jnp.where(eye, v, 0)


def nll(theta: jax.Array, x: jax.Array, y: jax.Array, mesh: Any) -> jax.Array:
    """Negative log marginal likelihood through ``jaxwren.lax`` on the sharded ``K``."""
    k = kernel_matrix(theta, x, NamedSharding(mesh, P("rows", "cols")))
    low = wl.cholesky(k, mesh=mesh, symmetrize_input=False)  # K is symmetric by construction
    alpha = wl.cho_solve(low, y, mesh=mesh)
    return 0.5 * y @ alpha + 0.5 * wl.cho_logdet(low) + 0.5 * y.shape[0] * jnp.log(2 * jnp.pi)


def nll_jnp(theta: jax.Array, x: jax.Array, y: jax.Array, sharding: Any = None) -> jax.Array:
    """The same with ``jnp.linalg`` / ``jax.scipy.linalg`` (on one device; with
    ``sharding``, on the sharded kernel matrix: XLA gathers it to factor it)."""
    low = jnp.linalg.cholesky(kernel_matrix(theta, x, sharding))
    alpha = jsl.cho_solve((low, True), y)
    logdet = 2 * jnp.sum(jnp.log(jnp.diag(low)))
    return 0.5 * y @ alpha + 0.5 * logdet + 0.5 * y.shape[0] * jnp.log(2 * jnp.pi)


def sklearn_lml(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """scikit-learn's log marginal likelihood and its gradient at our ``theta``
    (sklearn's theta for ``C * RBF + WhiteKernel`` is ``(log s, log l, log v)``)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, WhiteKernel
    from sklearn.gaussian_process.kernels import ConstantKernel as C

    kern = C(1.0) * RBF(1.0) + WhiteKernel(1.0)
    gpr = GaussianProcessRegressor(kernel=kern, optimizer=None, alpha=0.0).fit(x, y)
    order = [1, 0, 2]  # ours (l, s, v) -> sklearn's (s, l, v)
    lml, grad = gpr.log_marginal_likelihood(np.asarray(theta)[order], eval_gradient=True)
    return float(lml), np.asarray(grad)[np.argsort(order)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=5, help="gradient steps")
    parser.add_argument("--lr", type=float, default=2.0, help="step size on nll / n")
    parser.add_argument("--check_max_n", type=int, default=4000,
                        help="compare with scikit-learn and jnp up to this n")  # fmt: skip
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # the script's choice, in main only

    mesh = jw.default_mesh()
    x, y = make_data(args.n)
    xs = jax.device_put(x, NamedSharding(mesh, P()))  # small: every device holds it
    ys = jax.device_put(y, NamedSharding(mesh, P()))
    value_and_grad = jax.jit(jax.value_and_grad(functools.partial(nll, mesh=mesh)))
    start = np.log([1.0, 1.0, 0.5])  # l = 1, s = 1, v = 0.5
    theta = jax.device_put(start, NamedSharding(mesh, P()))  # as the updates: one compile
    out: dict[str, Any] = {"n": args.n, "mesh": dict(mesh.shape)}
    with single_threaded_blas():  # CPU devices in one process: no BLAS oversubscription
        t0 = time.perf_counter()
        val, grad = jax.block_until_ready(value_and_grad(theta, xs, ys))
        out["first_call_s"] = time.perf_counter() - t0
        if args.n <= args.check_max_n:
            out.update(_check(theta, x, y, val, grad))
        for step in range(args.steps):
            t0 = time.perf_counter()
            val, grad = jax.block_until_ready(value_and_grad(theta, xs, ys))
            ell, s, v = np.exp(np.asarray(theta))
            print(f"step {step}: nll/n {float(val) / args.n:+.5f}  l {ell:.3f} s {s:.3f} "
                  f"v {v:.4f}  ({time.perf_counter() - t0:.2f} s)", flush=True)  # fmt: skip
            theta = theta - args.lr * grad / args.n
    out["theta"] = dict(zip(("length_scale", "signal_var", "noise_var"),
                            np.exp(np.asarray(theta)).tolist(), strict=True))  # fmt: skip
    print(f"after {args.steps} steps: {out['theta']} (true {TRUE})")
    return out


def _check(theta: jax.Array, x: np.ndarray, y: np.ndarray, val: jax.Array,
           grad: jax.Array) -> dict[str, float]:  # fmt: skip
    """The sharded likelihood and gradient against scikit-learn and one-device jnp."""
    lml, lml_grad = sklearn_lml(np.asarray(theta), x, y)
    args = jax.device_put((theta, x, y), jax.devices()[0])  # one device, unsharded
    ref_val, ref_grad = map(np.asarray, jax.jit(jax.value_and_grad(nll_jnp))(*args))
    val, grad = float(val), np.asarray(grad)
    res = {
        "rel_err_vs_sklearn": abs(val + lml) / abs(lml),
        "grad_rel_err_vs_sklearn": float(np.max(np.abs(grad + lml_grad) / np.abs(lml_grad))),
        "rel_err_vs_jnp": float(abs(val - ref_val) / abs(ref_val)),
        "grad_rel_err_vs_jnp": float(np.max(np.abs(grad - ref_grad) / np.abs(ref_grad))),
    }  # fmt: skip
    for k, v in res.items():
        print(f"{k}: {v:.2e}")
    return res


if __name__ == "__main__":
    main()
