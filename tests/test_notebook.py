"""The walkthrough notebook still runs on the committed artifacts."""
import nbformat
from nbclient import NotebookClient

from conftest import REPO

NB = REPO / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_executes():
    nb = nbformat.read(NB, as_version=4)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "the committed notebook has no outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NB.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
