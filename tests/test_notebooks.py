"""The data scientists' notebooks run top to bottom on the real data (and, for the error
analysis, the shipped bundle), and are stored without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.config import default_data_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO_ROOT / "notebooks"
# notebook -> needs the shipped model bundle
NEEDS_BUNDLE = {
    "01_data_exploration.ipynb": False,
    "02_error_analysis.ipynb": True,
    "03_active_learning.ipynb": False,
}


def _model_dir() -> Path:
    return Path(os.environ.get("CARETRIAGE_MODEL_DIR", REPO_ROOT / "models" / "caretriage-minilm"))


def test_every_notebook_is_listed() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NEEDS_BUNDLE)


@pytest.mark.parametrize("name", sorted(NEEDS_BUNDLE))
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not dirty, f"{name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.parametrize("name", sorted(NEEDS_BUNDLE))
def test_notebook_executes(name: str) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    data = default_data_dir()
    if not (data / "airline" / "test.csv").is_file():
        pytest.skip(f"shared data absent at {data} (set CARETRIAGE_DATA_DIR)")
    if NEEDS_BUNDLE[name] and not (_model_dir() / "bundle.json").is_file():
        pytest.skip(f"no model bundle at {_model_dir()} (train one or set CARETRIAGE_MODEL_DIR)")

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO_ROOT)}},
    )
    # Raises CellExecutionError, naming the cell and its traceback, on the first failing cell.
    client.execute()
