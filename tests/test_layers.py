"""The house's layering, checked on the source: quant/ never imports evalsuite, and each evalsuite folder imports
only the folders its docstring allows, so dependencies keep pointing down the data flow."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder (or top-level module) of evalsuite -> what of evalsuite it may import, as its __init__ docstring says
ALLOWED = {
    "errors": set(),
    "console": set(),
    "records": set(),
    "backend": {"errors", "console"},
    "load": {"errors", "records"},
    "spec": {"errors", "records", "load", "backend"},
    "report": {"errors", "records", "spec"},
    "finetune": {"errors", "spec"},
    "run": {"errors", "console", "records", "spec", "load", "backend", "finetune"},
    "__main__": {"errors", "console", "records", "spec", "load", "run", "report"},
}


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "quant").glob("*.py")), ids=lambda p: p.name)
def test_quant_never_imports_evalsuite(path):
    assert not [m for m in imported_modules(path) if m.split(".")[0] == "evalsuite"]


@pytest.mark.parametrize("path", sorted((ROOT / "evalsuite").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_evalsuite_folder_imports_only_what_it_may(path):
    rel = path.relative_to(ROOT / "evalsuite")
    layer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    if layer == "__init__":
        return
    used = {m.split(".")[1] for m in imported_modules(path) if m.startswith("evalsuite.")} - {layer}
    assert used <= ALLOWED[layer], f"{rel} imports {sorted(used - ALLOWED[layer])}"


def test_every_folder_says_what_it_owns_and_may_import():
    for folder in (p for p in (ROOT / "evalsuite").iterdir() if p.is_dir() and p.name != "__pycache__"):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        assert "May import" in doc and len(doc) > 150, folder.name
