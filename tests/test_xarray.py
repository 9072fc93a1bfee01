"""jaxwren matrices as xarray variables: dims, attrs, matrices inside a zarr group."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

import jaxwren as jw
from tests.helpers import rand, tolerance


def test_a_group_of_jaxwren_matrices_opens_as_a_dataset(tmp_path):
    root = str(tmp_path / "ds")
    zarr.open_group(root, mode="w", attributes={"title": "run 1"})
    x = rand((50, 30), seed=41)
    X = jw.from_numpy(x, f"{root}/X", (16, 16), dims=("sample", "feature"), attrs={"units": "m"})
    jw.matmul(X.T, X, f"{root}/G")  # an out inside a group is fine (a group is not a matrix)
    jw.save(x[:, :5], f"{root}/S", (16, 16), dims=("sample", "first"))
    ds = xr.open_zarr(root, consolidated=False)
    assert ds["X"].dims == ("sample", "feature") and ds["X"].attrs["units"] == "m"
    np.testing.assert_array_equal(ds["X"].values, x)
    assert ds["G"].dims == ("G_row", "G_col")  # default names: the matrix's own
    np.testing.assert_allclose(ds["G"].values, x.T @ x, **tolerance("float64"))
    assert ds.sizes["sample"] == 50 and ds["S"].dims == ("sample", "first")
    np.testing.assert_array_equal(jw.BigMatrix.open(f"{root}/X").numpy(), x)


def test_bad_labels_are_refused_before_writing(tmp_path):
    x = rand((4, 4), seed=42)
    for dims in (("a",), ("a", "a"), ("a", ""), "ab"):
        with pytest.raises(jw.ShapeMismatchError, match="dims must be two distinct"):
            jw.from_numpy(x, str(tmp_path / "m"), (2, 2), dims=dims)
    with pytest.raises(jw.ConfigError, match="JSON"):
        jw.from_numpy(x, str(tmp_path / "m"), (2, 2), attrs={"f": object()})
    with pytest.raises(jw.ConfigError, match="'jaxwren'"):
        jw.from_numpy(x, str(tmp_path / "m"), (2, 2), attrs={"jaxwren": 1})
    assert not (tmp_path / "m").exists()


def test_a_group_is_not_an_out(tmp_path):
    root = str(tmp_path / "g")
    zarr.open_group(root, mode="w")
    a = rand((4, 4), seed=43)
    with pytest.raises(jw.OutputConflictError, match="already holds"):
        jw.matmul(a, a, out=root)
