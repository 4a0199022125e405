"""The walkthrough notebook still runs on the committed artifacts."""
import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

NB = REPO / "notebooks" / "walkthrough.ipynb"


@pytest.mark.timeout(1200)  # a kernel, then PPO with 3-fold CV on the real BoolQ tree; 600 s per cell below
def test_walkthrough_notebook_executes():
    nb = nbformat.read(NB, as_version=4)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "the committed notebook has no outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NB.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
