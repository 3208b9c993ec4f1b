"""Atomic writes: permissions like a plain open(), nothing left behind on failure."""
from __future__ import annotations

import os
import stat

import pytest

from sfda_deploy import runs


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_follow_the_umask(tmp_path, monkeypatch, umask, expected):
    # 0o666 & ~umask: 0o666 & ~0o022 = 0o644, & ~0o002 = 0o664, & ~0o077 = 0o600 (mkstemp alone: always 0o600)
    monkeypatch.setattr(runs, "_UMASK", umask)
    assert _mode(runs.write_bytes(tmp_path / "model.onnx", b"x")) == expected
    assert _mode(runs.write_json(tmp_path / "report.json", {"a": 1})) == expected
    with runs.atomic_path(tmp_path / "model.engine") as tmp:
        tmp.write_bytes(b"plan")
    assert _mode(tmp_path / "model.engine") == expected


def test_atomic_files_match_plain_open(tmp_path):
    """With the real process umask, the mode is the one open() gives a new file."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(runs.write_text(tmp_path / "atomic.txt", "x")) == _mode(plain)


def test_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with runs.atomic_path(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_every_command_logs_its_command_line_and_outcome_in_its_run_directory(invoke, tmp_path):
    # import-pth writes no log of its own: the CLI appends the command and how it ended to log.txt
    import torch

    from sfda_deploy.models import build_model

    pth = tmp_path / "w.pth"
    torch.save(build_model("tiny", num_classes=19).state_dict(), pth)
    r = invoke(["import-pth", pth, "--arch", "tiny", "--normalization", "imagenet", "--name", "logged"])
    assert r.exit_code == 0, r.output
    log = (tmp_path / "runs" / "import" / "logged" / "log.txt").read_text().splitlines()
    assert log[0].endswith(f"command: sfda-deploy import-pth {pth} --arch tiny --normalization imagenet --name logged")
    assert " finished after " in log[1] and len(log) == 2
