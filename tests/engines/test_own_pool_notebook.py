"""The own-pool walk-through (notebooks/own_pool.ipynb, docs/own-pool.md) runs as committed: three records
and two experts behind one llama-server through the `openai` backend, taken through every stage to a served
answer. Its tier is its folder (engines: it needs `make llama-server`)."""
import json

import nbformat
import pytest
from conftest import REPO, require_path_or_skip
from nbclient import NotebookClient

NB = REPO / "notebooks" / "own_pool.ipynb"


@pytest.mark.timeout(1500)  # llama-server's start, then every stage on three records; 1200 s per cell below
def test_own_pool_notebook_executes_to_a_served_answer():
    require_path_or_skip(REPO / ".engines" / "bin" / "llama-server", "make llama-server")
    nb = nbformat.read(NB, as_version=4)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "the committed notebook has no outputs"
    NotebookClient(nb, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(NB.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "served: ['gemma3', 'smollm2']" in text  # the experts really were llama-server's
    der, _ = json.JSONDecoder().raw_decode(text.split("\nder: ", 1)[1])  # the gateway's routing object
    assert der["path"] and all(step["expert"] in ("smollm2-served", "gemma3-served") for step in der["steps"])
    assert der["cost_gflops"] > 0
    assert "**DER" in text.split("$ der-pipeline evaluate -d mine", 1)[1]  # evaluate printed its table
