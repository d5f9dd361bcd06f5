"""notebooks/analysis.ipynb executes top to bottom (nbclient) on a run this test writes, and shows its tables and plots."""
from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
from test_report import write_synthetic_run

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analysis.ipynb"


def test_analysis_notebook_executes_on_a_run(tmp_path, monkeypatch):
    run_dir = write_synthetic_run(tmp_path / "run")
    monkeypatch.setenv("EVALSUITE_RUN_DIR", str(run_dir))  # the kernel inherits this environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert f"{run_dir}: 6 cells" in text
    for shown in ("4bit-gptq-g64", "mcnemar-exact", "out of memory", "ppl_offline:word_perplexity"):
        assert shown in html, shown
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
