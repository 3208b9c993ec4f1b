"""Run directories that are never overwritten, atomic file writes, and the run log.

Every command writes into ``<root>/<command>/<name>`` (root: ``$SFDA_RUNS_DIR`` or ``./runs``); when
that exists, ``<name>-2``, ``<name>-3``, ... is used instead. Files are written to a temporary name
in the same directory, then renamed, so a crash never leaves a half-written file under the real name.

A run directory is marked ``INCOMPLETE`` (the writer's pid, host and start time) the moment it is
created, and the marker is removed last, when the command finished (``finish_run``); a command that
fails turns it into ``FAILED`` (the reason); a ``kill -9`` leaves ``INCOMPLETE``. ``run_status`` reads
the markers back, ``check_finished`` refuses a file of an interrupted or failed run, and creating a run
directory deletes the hidden temporaries interrupted runs left next to it.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml

from sfda_deploy.disk import DiskFullError, is_disk_full
from sfda_deploy.errors import SfdaError

# Run directories this process created: the CLI appends its command line and outcome to their log.txt.
_CREATED: list[Path] = []
INCOMPLETE, FAILED = "INCOMPLETE", "FAILED"
# Hidden temporaries: atomic_path's ``.<name>.XXXX.tmp<suffix>``, the video writer's ``.<stem>.partial<suffix>``.
TEMPORARY_GLOBS = (".*.tmp*", ".*.partial*")


def runs_root() -> Path:
    return Path(os.environ.get("SFDA_RUNS_DIR", "runs"))


def user_cache_dir() -> Path:
    """Where caches shared by every run live (TensorRT timing caches): ``$SFDA_DEPLOY_CACHE``, else
    ``$XDG_CACHE_HOME/sfda-deploy``, else ``~/.cache/sfda-deploy``."""
    if os.environ.get("SFDA_DEPLOY_CACHE"):
        return Path(os.environ["SFDA_DEPLOY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sfda-deploy"


def new_run_dir(command: str, name: str, root: Path | str | None = None) -> Path:
    """Create and return a fresh directory ``root/command/name`` (or ``name-2``, ``name-3``, ...)."""
    base = Path(root) if root is not None else runs_root()
    parent = base / command
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SfdaError(f"cannot create the output directory {parent} ({e.strerror}): "
                        "choose a writable place with SFDA_RUNS_DIR=/path") from None
    for i in range(1, 10_000):
        candidate = parent / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir()  # atomic: two concurrent runs never share a directory
        except FileExistsError:
            continue
        except OSError as e:
            raise SfdaError(f"cannot create the output directory {candidate} ({e.strerror}): "
                            "choose a writable place with SFDA_RUNS_DIR=/path") from None
        start_run(candidate)
        clean_stale_temporaries(parent)
        return candidate
    raise SfdaError(f"too many runs named '{name}' in {parent}: pass --name with a new name")


def remove_if_unused(run_dir: Path) -> bool:
    """Delete ``run_dir`` if nothing but its marks was written to it (a command that failed early)."""
    if any(p.name not in (INCOMPLETE, FAILED) for p in run_dir.iterdir()):
        return False
    for mark in (INCOMPLETE, FAILED):
        (run_dir / mark).unlink(missing_ok=True)
    run_dir.rmdir()
    return True


def check_writable(command: str) -> None:
    """Fail now, writing nothing, if ``new_run_dir(command, ...)`` could not create its directory (for
    commands that make their run directory only after minutes of work)."""
    place = runs_root() / command
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
        reason = "Not a directory" if place.exists() and not place.is_dir() else "Permission denied"
        raise SfdaError(f"cannot create the output directory {runs_root() / command} ({reason}): "
                        "choose a writable place with SFDA_RUNS_DIR=/path")


def start_run(run_dir: Path) -> None:
    """Mark ``run_dir`` INCOMPLETE (first) and have ``finish_run`` remove the mark when the command ends."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    write_text(run_dir / INCOMPLETE, f"pid {os.getpid()} host {socket.gethostname()} started {stamp}\n"
                                     "this run has not finished: its files may be partial or missing\n")
    (run_dir / FAILED).unlink(missing_ok=True)
    if run_dir not in _CREATED:
        _CREATED.append(run_dir)


def _writer(marker: Path) -> tuple[int, str]:
    """``(pid, host)`` named in an INCOMPLETE marker (``(0, "")`` if unreadable)."""
    try:
        fields = marker.read_text().split()
        return int(fields[1]), fields[3]
    except (OSError, ValueError, IndexError):
        return 0, ""


def _writer_alive(marker: Path) -> bool:
    """Whether the process named in an INCOMPLETE marker still runs (another host's: assumed so)."""
    pid, host = _writer(marker)
    if not pid:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_status(run_dir: Path | str) -> tuple[str, str]:
    """``(status, detail)``: ``finished`` (no mark), ``running``, ``interrupted`` (its writer is gone) or
    ``failed`` (detail: the reason)."""
    run_dir = Path(run_dir)
    if (run_dir / FAILED).is_file():
        lines = (run_dir / FAILED).read_text(errors="replace").strip().splitlines()
        return "failed", lines[0] if lines else ""
    if (run_dir / INCOMPLETE).is_file():
        return ("running" if _writer_alive(run_dir / INCOMPLETE) else "interrupted"), ""
    return "finished", ""


def written_by_another_process(run_dir: Path | str) -> bool:
    """True while another live process holds ``run_dir``'s INCOMPLETE mark (resuming it would interleave)."""
    marker = Path(run_dir) / INCOMPLETE
    return (marker.is_file() and _writer(marker) != (os.getpid(), socket.gethostname())
            and _writer_alive(marker))


def check_finished(path: Path | str) -> None:
    """Refuse a file whose run directory (its folder) is marked failed or interrupted."""
    status, detail = run_status(Path(path).parent)
    if status == "failed":
        raise SfdaError(f"{path} belongs to a run that failed ({detail}): its files are partial; resume that run "
                        "(--resume) or use a finished one")
    if status == "interrupted":
        raise SfdaError(f"{path} belongs to a run that was interrupted ({Path(path).parent}/{INCOMPLETE}): its files "
                        "are partial; resume that run (--resume) or run the command again")


def clean_stale_temporaries(parent: Path) -> list[Path]:
    """Delete the hidden temporaries of interrupted runs in the directories under ``parent`` (their marks stay)."""
    removed = []
    for run_dir in (d for d in parent.iterdir() if d.is_dir()) if parent.is_dir() else ():
        if run_status(run_dir)[0] not in ("interrupted", "failed"):
            continue
        for pattern in TEMPORARY_GLOBS:
            for tmp in run_dir.rglob(pattern):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
    return removed




def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


# Read once at import, before any thread could create files while the mask is briefly 0.
_UMASK = _read_umask()


def default_mode(directory: bool = False) -> int:
    """The permissions a plain ``open(path, "w")`` (``mkdir`` for a folder) gives under this umask."""
    return (0o777 if directory else 0o666) & ~_UMASK


@contextmanager
def atomic_path(path: Path | str, size: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A full disk raises ``disk.DiskFullError`` naming the folder, the free space and the write's size
    (``size``, or the ``write_size`` of ``disk.write_all``'s error, else at least what reached the disk).

    The file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` minus the umask):
    ``mkstemp`` creates it ``0o600``, which would hide exported models from other users, e.g. a
    deployment service.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # after the block: writers may have replaced the file
        os.replace(tmp_path, path)
    except OSError as e:  # disk full, permissions, a file where a folder should be: one line, not a traceback
        if is_disk_full(e):
            raise _disk_full(path, tmp_path, getattr(e, "write_size", size)) from None
        raise SfdaError(f"cannot write {path} ({e.strerror or e}): free some disk space or write elsewhere "
                        "(SFDA_RUNS_DIR=/path)") from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _disk_full(path: Path, tmp: Optional[Path], size: Optional[int]) -> DiskFullError:
    """The error of a write that filled the disk; without a known size, what reached the disk bounds it."""
    if size is None and tmp is not None and tmp.exists():
        return DiskFullError(path, tmp.stat().st_size, "at least ")
    return DiskFullError(path, size)


def write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml(path: Path | str, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(_plain(obj), sort_keys=False))


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _plain(obj: Any) -> Any:
    """Tuples → lists, Paths → str, so YAML stays readable and safe_load-able."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def run_logger(run_dir: Path, name: str = "sfda_deploy") -> logging.Logger:
    """A logger that appends to ``run_dir/log.txt`` (and nothing else: the CLI prints its own lines)."""
    logger = logging.getLogger(f"{name}.{run_dir}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.FileHandler(run_dir / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def forget_created_runs() -> None:
    _CREATED.clear()


def finish_run(run_dir: Path, outcome: str = "finished") -> None:
    """The last write of a run: remove its INCOMPLETE mark (``finished``) or turn it into FAILED (an
    ``error: ...``/``failed: ...`` outcome); an interruption leaves the mark."""
    marker = run_dir / INCOMPLETE
    if not marker.is_file():
        return
    try:
        if outcome == "finished":
            marker.unlink()
        elif outcome.startswith(("error", "failed")):
            write_text(run_dir / FAILED, outcome + "\n")
            marker.unlink()
    except (OSError, SfdaError):
        pass  # a read-only place: the mark stays, which is still the truth (not finished)


def log_command(argv: Sequence[str], outcome: str, seconds: float) -> None:
    """Append the command line and its outcome to ``log.txt`` of every run directory this process
    created or resumed since ``forget_created_runs`` (so every command's run directory has a log), then
    mark them finished or failed (``finish_run``); directories removed on failure are skipped."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    line = " ".join(["sfda-deploy", *(shlex.quote(str(a)) for a in argv)])
    for run_dir in _CREATED:
        if run_dir.is_dir():
            try:
                with open(run_dir / "log.txt", "a") as f:
                    f.write(f"{stamp} command: {line}\n{stamp} {outcome} after {seconds:.1f} s\n")
            except OSError:
                pass  # the log must not turn a finished command into a failed one
    for run_dir in _CREATED:
        finish_run(run_dir, outcome)
    forget_created_runs()
