"""Layering: storage/ imports nothing above it (sharding, engine, linalg, tables, lax),
not even at run time inside a function; its device conveniences go through a slot."""

import ast
import pathlib

import numpy as np
import pytest

import jaxwren as jw
from jaxwren.storage import device_io

STORAGE = pathlib.Path(jw.__file__).parent / "storage"
ABOVE = ("jaxwren.sharding", "jaxwren.engine", "jaxwren.linalg", "jaxwren.tables", "jaxwren.lax")


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):  # every level, functions included
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against jaxwren.storage
                base = "jaxwren" if node.level == 2 else "jaxwren.storage"
                yield f"{base}.{node.module}" if node.module else base
            else:
                yield node.module or ""


def test_storage_imports_nothing_above_it():
    files = sorted(STORAGE.glob("*.py"))
    assert len(files) > 5
    upward = [
        (f.name, name)
        for f in files
        for name in _imports(f)
        if name.startswith(ABOVE) or name == "jaxwren"
    ]
    assert upward == []


def test_to_jax_and_row_batches_without_device_io(monkeypatch):
    a = jw.from_numpy(np.ones((4, 4), np.float32), "memory://layering/a", (2, 2))
    monkeypatch.setattr(device_io, "_SLOTS", {})
    with pytest.raises(jw.ConfigError, match=r"BigMatrix.to_jax: no device IO is registered"):
        a.to_jax()
    with pytest.raises(jw.ConfigError, match=r"BigMatrix.iter_row_batches: no device IO"):
        a.iter_row_batches(2)


def test_device_io_slots_are_named():
    with pytest.raises(jw.ConfigError, match=r"unknown slot 'save'"):
        device_io.register("save", print)


LONG_EXEMPT: set[str] = set()  # nothing is exempt


def test_modules_stay_under_400_lines():
    package = pathlib.Path(jw.__file__).parent
    lines = {str(f.relative_to(package)): len(f.read_text().splitlines())
             for f in package.rglob("*.py")}  # fmt: skip
    assert len(lines) > 50
    long = {name: n for name, n in lines.items() if n > 400 and name not in LONG_EXEMPT}
    assert long == {}, f"split these modules: {long}"


def test_the_engine_never_imports_the_algorithms():
    engine = pathlib.Path(jw.__file__).parent / "engine"
    files = sorted(engine.glob("*.py"))
    assert len(files) > 5
    for f in files:
        assert not [m for m in _imports(f) if m.startswith("jaxwren.linalg")], f.name


def test_lax_imports_no_store_backed_layer():
    """jaxwren.lax (the traceable kernels) sits below the store-backed operations: the
    pipeline's in-core Cholesky calls lax's kernel, never the other way round."""
    files = sorted((STORAGE.parent / "lax").glob("*.py"))
    assert any(f.name == "cholesky_kernel.py" for f in files)
    upward = [(f.name, name) for f in files for name in _imports(f)
              if name.startswith(("jaxwren.engine", "jaxwren.linalg", "jaxwren.tables"))]  # fmt: skip
    assert upward == []
