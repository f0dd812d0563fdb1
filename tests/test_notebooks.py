"""The notebooks run (in their fast mode) and are stored without outputs.

Each notebook has a cell tagged `parameters`; the test inserts a cell after it that sets `FAST = True`
(plus per-test values such as an output directory), the papermill convention, and executes the
notebook top to bottom with nbclient on the `python3` kernel of the interpreter running pytest.

Strip outputs before committing: `python tests/test_notebooks.py --strip` (rewrites notebooks/*.ipynb).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# the `notebooks` extra (part of `dev`): a missing one must fail, not skip
import ipykernel  # noqa: E402,F401
import matplotlib  # noqa: E402,F401
import nbclient  # noqa: E402
import nbformat  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise AssertionError(f"expected exactly one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def execute(path: Path, timeout: int = 600, **params) -> None:
    """Run the notebook at `path` with FAST = True and `params` injected after its parameter cell."""
    nb = nbformat.read(path, as_version=4)
    lines = ["# injected by tests/test_notebooks.py", "FAST = True"] + [f"{k} = {v!r}" for k, v in params.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(parameters_index(nb) + 1, cell)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()


@pytest.fixture
def kernel_env(monkeypatch):
    """The `python3` kernelspec launches `python`: make that this interpreter (the one with lit_janus)."""
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # these models are tiny: on a busy 2-core runner OpenMP's spinning threads make them ~10x slower
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_train_shapes.ipynb", "03_recipe.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    parameters_index(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; run `python tests/test_notebooks.py --strip`"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state in the metadata; strip it"


def test_quickstart(kernel_env, tiny_hf_dir):
    # a transformers-layout checkpoint directory, read by load_any (the model search is covered by 03)
    execute(NOTEBOOK_DIR / "01_quickstart.ipynb", MODEL_PATH=str(tiny_hf_dir))


def test_train_shapes(kernel_env, tmp_path):
    execute(NOTEBOOK_DIR / "02_train_shapes.ipynb", OUT=str(tmp_path / "run"))


def test_recipe(kernel_env):
    execute(NOTEBOOK_DIR / "03_recipe.ipynb")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_quickstart", "03_recipe"])
def test_default_mode(kernel_env, name):
    """The full-size defaults (02's take minutes of training: run it by hand)."""
    execute(NOTEBOOK_DIR / f"{name}.ipynb", FAST=False)


def strip(paths) -> list[Path]:
    """Remove outputs, execution counts and widget state in place; returns the files that changed."""
    changed = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        for c in nb.cells:
            if c.cell_type == "code":
                c.outputs, c.execution_count = [], None
            c.metadata.pop("execution", None)
        nb.metadata.pop("widgets", None)
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--strip"]:
        sys.exit("usage: python tests/test_notebooks.py --strip")
    for p in strip(NOTEBOOKS):
        print(f"stripped {p}")
