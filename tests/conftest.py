"""Shared fixtures: every test writes runs into its own tmp dir; CLI invocation helper."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from sfda_deploy.cli import cli

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    """``slow``-marked tests (minutes each on 2 CPU cores) run only with SFDA_RUN_SLOW=1."""
    import os

    if os.environ.get("SFDA_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set SFDA_RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SFDA_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)


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
