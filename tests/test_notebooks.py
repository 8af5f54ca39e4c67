"""Execute every notebook in notebooks/ on small settings, so they never rot; and keep them stripped of outputs.

The kernel is ``python3``: ipykernel installs that spec into the virtual environment (``.venv/share/jupyter``)
and jupyter_client starts it with this interpreter (``sys.executable``), so a fresh clone after ``make sync`` needs
no ``ipykernel install`` step (``JUPYTER_PREFER_ENV_PATH=1`` makes that spec win over a user-level one). The
kernel inherits this process's environment, including the hermetic caches of ``conftest.py``,
``MICROGPT_NOTEBOOK_SMALL=1`` and ``MICROGPT_NOTEBOOK_OFFLINE=1``. The notebooks need nothing outside the
repository: without ../shared, 01 skips only its comparison with OpenAI's encodings (it never downloads in a test).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import SHARED_DATA

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def read_notebook(path: Path) -> nbformat.NotebookNode:
    notebook: nbformat.NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]  # unannotated
    return notebook


def test_notebooks_exist_and_are_stripped() -> None:
    names = [path.name for path in NOTEBOOKS]
    assert {"01-tokenizer.ipynb", "02-model.ipynb", "03-pipeline.ipynb", "04-visualise.ipynb"} <= set(names)
    for path in NOTEBOOKS:
        notebook = read_notebook(path)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs first"


@pytest.fixture(scope="module")
def shared_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pipeline run directory for 03 and 04: 04 finds 03's steps done (as it does for a user) and skips them."""
    return tmp_path_factory.mktemp("notebook-run") / "run"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path: Path, shared_run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROGPT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MICROGPT_NOTEBOOK_OFFLINE", "1")
    monkeypatch.setenv("MICROGPT_NOTEBOOK_RUN_DIR", str(shared_run_dir))
    # The venv's kernelspec before a user-level one (`ipykernel install --user` elsewhere would shadow it).
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    notebook = read_notebook(path)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the failing cell and its traceback, on any error
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    printed = "".join(out.get("text", "") for out in outputs)
    assert printed.strip(), f"{path.name} printed nothing"
    if path.name == "01-tokenizer.ipynb":  # compares with GPT-2 and GPT-4 exactly when their files are at hand
        compared = (SHARED_DATA / "tokenizers").is_dir()
        assert ("gpt4 (cl100k)" in printed) == compared and ("GPT-2 and GPT-4 skipped" in printed) != compared
    if any("plt.show()" in cell.source for cell in notebook.cells):  # its figures must really be drawn
        assert any("image/png" in out.get("data", {}) for out in outputs), f"{path.name} drew no figure"
