"""Every script in scripts/ is a module of the ``scripts`` package: it imports and parses its flags as
``python -m scripts.NAME``, edits no ``sys.path`` and imports nothing from the tests."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "scripts").glob("*.py") if p.name != "__init__.py")
SIBLINGS = {p.stem for p in SCRIPTS}


@pytest.mark.slow  # end to end (seconds to a minute): left out by `make test-fast`
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_help(script):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", f"scripts.{script.stem}", "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout


def test_scripts_edit_no_import_path_and_import_siblings_as_scripts_and_no_tests():
    offenders = []
    for script in SCRIPTS:
        for node in ast.walk(ast.parse(script.read_text(), str(script))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offenders.append(f"{script.name}:{node.lineno} sys.path")
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{script.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "tests"]
            # a sibling imported by its bare name works only when run as a file: ``scripts.NAME`` instead
            offenders += [f"{script.name}:{node.lineno} imports {n} (scripts.{n})" for n in names if n in SIBLINGS]
    assert offenders == []
