"""Shared fixtures: every test writes runs into its own tmp dir; CLI invocation helper; test data built
once per session (``session_files``) and copied into each test's tmp dir (``copy_of``), so a test may
change its copy without touching another test's."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from sfda_deploy.cli import cli

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    """``heavy``-marked tests (minutes each on 2 CPU cores) run only with SFDA_RUN_SLOW=1.

    ``slow`` (end-to-end) tests always run in ``make test``; ``make test-fast`` leaves them out (``-m "not slow"``).
    """
    import os

    if os.environ.get("SFDA_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="heavy: set SFDA_RUN_SLOW=1 to run")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SFDA_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def session_files(tmp_path_factory) -> SimpleNamespace:
    """Built once: the tiny checkpoint and its ONNX (``tests.runtime_data``), a two-image Cityscapes-layout
    dataset (``tests.fixtures_data``) and a labelled two-condition drive (``data.synth_drive``)."""
    from sfda_deploy.data.synth_drive import DrivePlan, generate_drive
    from tests import fixtures_data as fx
    from tests.runtime_data import make_checkpoint, make_onnx

    root = tmp_path_factory.mktemp("session_files")
    plan = DrivePlan(("real", "night"), rounds=2, condition_frames=3, scene_frames=6, size=(32, 64), seed=0)
    return SimpleNamespace(checkpoint=make_checkpoint(root / "tiny.safetensors"), onnx=make_onnx(root / "tiny.onnx"),
                           cityscapes=fx.write_cityscapes(root / "cs", n=2),
                           drive=generate_drive(root / "drive", plan, progress=False))


def copy_of(src: Path, folder: Path) -> Path:
    """A copy of the file or folder ``src`` inside ``folder`` (same name)."""
    dst = folder / src.name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


@pytest.fixture
def invoke():
    """invoke(args) → click Result; user errors are exit 2 with one 'error:' line on stderr."""
    runner = CliRunner()

    def _invoke(args, **kw):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)

    return _invoke


def assert_user_error(result, *fragments):
    """Exit 2, one line starting with 'error:', no traceback, and each fragment in the message."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error:"), err
    assert "Traceback" not in result.output and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for frag in fragments:
        assert frag in err, (frag, err)
