"""Notebooks, clusters and packaging: progress bars on in terminals and notebooks (off
when not interactive); jaxwren.distributed.initialize() deferring to JAX's cluster
auto-detection; LICENSE, py.typed and help(jaxwren) listing the API in sections."""

from __future__ import annotations

import io
import pathlib
import pydoc
import re
import sys
import types

import jax
import pytest

import jaxwren as jw
from jaxwren import distributed
from jaxwren.engine.runner import _progress
from jaxwren.tables.stream import _progress_bar

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- progress
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _kernel(monkeypatch, *, kernel: bool) -> None:
    """Makes this process look like a Jupyter kernel (``kernel``) or a terminal IPython."""
    shell = types.SimpleNamespace(kernel=object() if kernel else None, config={})
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))


def _shown(bar) -> bool:
    if bar is None:
        return False
    bar.close()
    return True


def test_progress_bars_are_on_in_a_notebook(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a notebook's stderr: no terminal
    _kernel(monkeypatch, kernel=True)
    assert _shown(_progress(5, "matmul", None))
    assert _shown(_progress_bar(5, "from_csv", None))  # the tables' bar: the same rule
    assert not _shown(_progress(5, "matmul", False))  # progress=False still wins


def test_progress_bars_follow_the_terminal_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert not _shown(_progress(5, "matmul", None))  # a batch job, a pipe, a CI log
    assert not _shown(_progress_bar(5, "from_csv", None))
    assert _shown(_progress(5, "matmul", True))
    _kernel(monkeypatch, kernel=False)  # IPython in a terminal whose stderr is piped
    assert not _shown(_progress(5, "matmul", None))
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert _shown(_progress(5, "matmul", None))
    assert _shown(_progress_bar(5, "from_csv", None))
    monkeypatch.setattr(sys, "stderr", None)  # pythonw: no stderr at all
    monkeypatch.delitem(sys.modules, "ipykernel")
    assert not _shown(_progress(5, "matmul", None))


# --------------------------------------------------------------- distributed.initialize
@pytest.fixture
def jax_init(monkeypatch):
    """Records jax.distributed.initialize and the config updates instead of doing them."""
    calls: dict[str, list] = {"init": [], "config": []}
    monkeypatch.setattr(jax.distributed, "initialize",
                        lambda *a, **k: calls["init"].append((a, k)))  # fmt: skip
    monkeypatch.setattr(jax.config, "update", lambda *a: calls["config"].append(a))
    return calls


def test_no_arguments_defer_to_jax_auto_detection(jax_init):
    distributed.initialize(environ={})  # under srun / mpirun / a Kubernetes JobSet
    assert jax_init["init"] == [((None, None, None), {})]
    assert jax_init["config"] == [("jax_cpu_collectives_implementation", "gloo")]


def test_given_values_win_and_jax_detects_the_rest(jax_init):
    env = {"JAXWREN_COORDINATOR": "h:1", "JAXWREN_NUM_PROCESSES": "2", "JAXWREN_PROCESS_ID": "1"}
    distributed.initialize(environ=env)  # python -m jaxwren.launch
    distributed.initialize(num_processes=4, environ={}, local_device_ids=[0])
    distributed.initialize("c:2", 3, 0, environ={"JAX_PLATFORMS": "cuda"})
    assert jax_init["init"] == [(("h:1", 2, 1), {}), ((None, 4, None), {"local_device_ids": [0]}),
                                (("c:2", 3, 0), {})]  # fmt: skip
    assert len(jax_init["config"]) == 2  # CPU collectives only for CPU runs


def test_no_cluster_detected_names_the_ways_to_start_one(monkeypatch, jax_init):
    def undetected(*a, **k):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", undetected)
    with pytest.raises(jw.ConfigError, match=r"coordinator_address should be defined.*"
                       r"jaxwren\.launch.*SLURM.*Open MPI.*Kubernetes"):  # fmt: skip
        distributed.initialize(environ={})
    assert jax_init["config"][-1] == (
        "jax_cpu_collectives_implementation",
        jax.config.jax_cpu_collectives_implementation,
    )  # restored


def test_too_late_is_typed_and_names_the_fix(monkeypatch, jax_init):
    def started(*a, **k):
        raise RuntimeError("jax.distributed.initialize() must be called before any JAX calls")

    monkeypatch.setattr(jax.distributed, "initialize", started)
    with pytest.raises(jw.ConfigError, match=r"must be called before.*first thing in the "
                       r"program.*jaxwren\.launch"):  # fmt: skip
        distributed.initialize(environ={})
    with pytest.raises(jw.ConfigError, match=r"first thing in the program, before jaxwren or "
                       r"JAX touches a device\.$"):  # fmt: skip
        distributed.initialize("h:1", 2, 0, environ={})


def test_malformed_values_are_refused_before_jax_is_called(jax_init):
    for args, env, match in [
        (("h:1", 2, 2), {}, r"process_id=2 must be in \[0, 2\)"),
        ((), {"JAXWREN_NUM_PROCESSES": "two"}, "num_processes='two' must be an integer"),
        ((None, 0), {}, "num_processes=0 must be >= 1"),
    ]:
        with pytest.raises(jw.ConfigError, match=match):
            distributed.initialize(*args, environ=env)
    assert jax_init["init"] == []


# ---------------------------------------------------------------------------- packaging
def test_license_and_py_typed_ship():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190
    assert "LICENSE" in project["project"]["license-files"]
    assert (ROOT / "jaxwren" / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["jaxwren"]


def _listed(doc: str) -> set[str]:
    """The names the docstring's sections list: the first column of their entries."""
    names = set()
    for line in doc.splitlines():
        if m := re.match(r"^  ([\w.]+(?:, [\w.]+)*)\s{2,}\S", line):
            names.update(m.group(1).split(", "))
    return names


def test_help_lists_the_api_in_sections():
    text = pydoc.render_doc(jw, renderer=pydoc.plaintext)
    for section in ("Storage:", "Compute:", "Tables:", "Errors:", "Config:"):
        assert re.search(rf"^\s*{section}", text, re.M), section
    listed = _listed(jw.__doc__)
    missing = sorted(set(jw.__all__) - listed)
    assert not missing, f"add {missing} to a section of jaxwren/__init__.py's docstring"
    for name in listed:  # and every name listed is real
        module, _, attr = name.rpartition(".")
        owner = __import__(module, fromlist=["_"]) if module else jw
        assert hasattr(owner, attr), f"jaxwren's docstring lists {name}, which does not exist"
    errors = {n for n in jw.__all__ if n.endswith("Error")}
    assert all(issubclass(getattr(jw, n), jw.JaxwrenError) for n in errors)
