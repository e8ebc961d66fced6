"""Run folders off one node's disk: each step works on its own scratch copy.

A training run's folder (``{RELAY_RUNS__URI}/<run id>``: tuned config, model, landed drift,
rollout outcome) is written and read by steps on different machines: Airflow tasks on any
worker, Ray jobs on any node. Where the runs' root is S3 (the prod profile), a step opens its
part of the folder with :func:`workspace`: the files are pulled into this node's scratch
(``RELAY_RUNS__SCRATCH``) at its start, and what it wrote is pushed back when it ends without
error, so a failed step leaves nothing half-written for the next one. Where the root is a local
path (the local profile) the folder is used as it is: no copy, the same paths as before.

The decisions (where a URI's copy lives, which files to pull, which to push) are pure functions
over file listings; only :func:`workspace` and the small readers/writers do I/O.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from relay.data.lake import filesystem
from relay.errors import ConfigError
from relay.settings import Settings, get_settings

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Stat:
    """What tells two copies of a file apart: size and modification time (ns)."""

    size: int
    mtime_ns: int


def run_key(run_id: str) -> str:
    """A run id as one safe folder name. Leading dots go too: ``..`` must not name the folder
    above."""
    return _UNSAFE.sub("_", run_id).lstrip(".") or "run"


def is_remote(uri: str) -> bool:
    """Whether a run folder lives in an object store (copied), not on a local path (used)."""
    return uri.startswith("s3://")


def run_uri(run_id: str, settings: Settings | None = None) -> str:
    """The run's folder: ``{RELAY_RUNS__URI}/<run id>`` (a path in the local profile)."""
    s = settings or get_settings()
    if s.runs.uri is None:  # pragma: no cover, the settings validator fills it
        raise ConfigError("RELAY_RUNS__URI is not set")
    return f"{s.runs.uri.rstrip('/')}/{run_key(run_id)}"


def scratch_path(uri: str, runs_uri: str, scratch: Path) -> Path:
    """Where this node keeps its copy of ``uri``: a path is itself; a folder under the runs'
    root keeps its place under ``scratch``; any other remote URI goes under ``scratch/_uri``.
    """
    if not is_remote(uri):
        return Path(uri)
    root = runs_uri.rstrip("/") + "/"
    rest = uri.removeprefix(root) if uri.startswith(root) else "_uri/" + uri.removeprefix("s3://")
    parts = [p for p in PurePosixPath(rest.strip("/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{uri} climbs out of its folder")
    return scratch.joinpath(*parts)


def to_pull(remote: Mapping[str, Stat], local: Mapping[str, Stat]) -> list[str]:
    """The remote files the local copy lacks or holds another version of (a pulled file keeps
    the remote's modification time, so an unchanged file is not fetched twice)."""
    return sorted(k for k, st in remote.items() if local.get(k) != st)


def to_push(before: Mapping[str, Stat], after: Mapping[str, Stat]) -> list[str]:
    """The files a step wrote: new since ``before`` (the copy as pulled) or changed.
    Files it deleted stay in the shared folder: a step only adds and replaces."""
    return sorted(k for k, st in after.items() if before.get(k) != st)


def local_listing(folder: Path) -> dict[str, Stat]:
    """Every file under ``folder`` by its relative POSIX path."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.rglob("*"):
        if path.is_file():
            st = path.stat()
            out[path.relative_to(folder).as_posix()] = Stat(st.st_size, st.st_mtime_ns)
    return out


def remote_listing(fs: pafs.FileSystem, root: str) -> dict[str, Stat]:
    """Every file under ``root`` in ``fs`` by its relative path."""
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return {
        info.path.removeprefix(root).lstrip("/"): Stat(info.size or 0, info.mtime_ns or 0)
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    }


def _copy(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    with src_fs.open_input_stream(src) as fin, dst_fs.open_output_stream(dst) as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)


def pull(uri: str, folder: Path, settings: Settings | None = None) -> list[str]:
    """Fetch what ``folder`` lacks of the remote ``uri``; returns the relative paths fetched."""
    fs, root = filesystem(uri, settings)
    remote = remote_listing(fs, root)
    names = to_pull(remote, local_listing(folder))
    local = pafs.LocalFileSystem()
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _copy(fs, f"{root}/{name}", local, str(path))
        os.utime(path, ns=(remote[name].mtime_ns, remote[name].mtime_ns))
    return names


def push(folder: Path, uri: str, names: list[str], settings: Settings | None = None) -> None:
    """Upload ``names`` (relative paths in ``folder``) to ``uri``; each copy then carries the
    uploaded object's time, so this node's next pull does not fetch them back."""
    fs, root = filesystem(uri, settings)
    local = pafs.LocalFileSystem()
    for name in names:
        if isinstance(fs, pafs.LocalFileSystem):  # S3 has no folders to make
            fs.create_dir(f"{root}/{name}".rsplit("/", 1)[0], recursive=True)
        _copy(local, str(folder / name), fs, f"{root}/{name}")
        mtime = fs.get_file_info(f"{root}/{name}").mtime_ns
        if mtime:
            os.utime(folder / name, ns=(mtime, mtime))


def _scratch(uri: str, s: Settings) -> Path:
    if s.runs.uri is None or s.runs.scratch is None:  # pragma: no cover, the validator fills
        raise ConfigError("RELAY_RUNS__URI and RELAY_RUNS__SCRATCH are not set")
    folder = scratch_path(uri, s.runs.uri, s.runs.scratch)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def workspace(
    uri: str | os.PathLike[str], settings: Settings | None = None, *, fetch: bool = True
) -> Iterator[Path]:
    """A local folder for a step's part of a run folder (a path or an ``s3://`` URI).

    Remote: pulled into scratch first (unless ``fetch`` is false: a step that only writes),
    and what the step wrote is pushed when the block ends without an error. Local: the folder
    itself, created if missing.
    """
    s = settings or get_settings()
    text = str(uri)
    folder = _scratch(text, s)
    if not is_remote(text):
        yield folder
        return
    if fetch:
        pull(text, folder, s)
    before = local_listing(folder)
    yield folder
    push(folder, text, to_push(before, local_listing(folder)), s)


def fetch(uri: str | os.PathLike[str], settings: Settings | None = None) -> Path:
    """A reading step's local copy of a run folder (pulled; nothing goes back): the folder
    itself where it is a local path."""
    s = settings or get_settings()
    folder = _scratch(str(uri), s)
    if is_remote(str(uri)):
        pull(str(uri), folder, s)
    return folder


def read_text(uri: str | os.PathLike[str], settings: Settings | None = None) -> str:
    """A run file's text, from a path or an ``s3://`` URI (FileNotFoundError if absent)."""
    fs, path = filesystem(str(uri), settings)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no file {uri}")
    with fs.open_input_stream(path) as f:
        return bytes(f.read()).decode()


def write_text(uri: str | os.PathLike[str], text: str, settings: Settings | None = None) -> str:
    """Write a small run file (one PUT on S3); returns ``uri``."""
    target = str(uri)
    if not is_remote(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    fs, path = filesystem(target, settings, single_put=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())
    return target


def exists(uri: str | os.PathLike[str], settings: Settings | None = None) -> bool:
    """Whether a run file exists."""
    fs, path = filesystem(str(uri), settings)
    return bool(fs.get_file_info(path).type == pafs.FileType.File)
