"""The layering rules of DESIGN.md, checked on the source: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = {"pkcs11": "chalicelib/hsm", "boto3": "chalicelib/store", "botocore": "chalicelib/store",
         "sqlite3": "chalicelib/store"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


SOURCES = sorted([*ROOT.joinpath("chalicelib").rglob("*.py"), ROOT / "app.py"])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_owning_package_imports_a_backend(path):
    rel = str(path.relative_to(ROOT))
    for module in _imports(path) & RULES.keys():
        assert rel.startswith(RULES[module]), f"{rel} imports {module}"


def test_dialects_do_not_reach_the_backends_directly():
    for path in ROOT.joinpath("chalicelib", "dialects").rglob("*.py"):
        text = path.read_text()
        assert "chalicelib.hsm.service" not in text and "chalicelib.store.sqlite" not in text \
            and "chalicelib.store.dynamodb" not in text, path


def test_app_py_holds_no_logic():
    tree = ast.parse((ROOT / "app.py").read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [f.name for f in funcs] == ["admin_function"]
    assert len(funcs[0].body) <= 2  # docstring + delegation
