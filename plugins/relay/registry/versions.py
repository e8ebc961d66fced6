"""Semantic versions and timestamped version ids (pure, no I/O).

A version id reads ``{model_name}_{Major.Minor.Patch}_{YYYYmmdd_HHMM}`` in UTC, for example
``eta_mlp_1.3.0_20261121_1402``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal, get_args

from relay.registry.errors import InvalidName, InvalidVersion

BumpKind = Literal["major", "minor", "patch"]

_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION_ID = re.compile(r"(?P<name>.+)_(?P<semver>\d+\.\d+\.\d+)_(?P<stamp>\d{8}_\d{4})")
_STAMP = "%Y%m%d_%H%M"


@dataclass(frozen=True, order=True)
class SemVer:
    """A ``Major.Minor.Patch`` version; compares numerically (1.10.0 > 1.9.0)."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> SemVer:
        """Read ``"1.3.0"``.

        Raises:
            InvalidVersion: The text is not three dot-separated numbers.
        """
        match = _SEMVER.fullmatch(text.strip())
        if match is None:
            raise InvalidVersion(f"{text!r} is not a semantic version like 1.3.0")
        return cls(*(int(part) for part in match.groups()))

    def bump(self, kind: BumpKind) -> SemVer:
        """The next version: a major bump resets minor and patch, a minor bump resets patch."""
        if kind == "major":
            return SemVer(self.major + 1, 0, 0)
        if kind == "minor":
            return SemVer(self.major, self.minor + 1, 0)
        if kind == "patch":
            return SemVer(self.major, self.minor, self.patch + 1)
        raise InvalidVersion(f"bump kind {kind!r} is not one of {', '.join(get_args(BumpKind))}")

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def next_version(latest: SemVer | None, kind: BumpKind) -> SemVer:
    """The version after ``latest``; a model's first version counts up from 0.0.0."""
    return (latest or SemVer(0, 0, 0)).bump(kind)


def check_name(name: str, what: str = "model name") -> str:
    """Refuse a name that cannot be one segment of a storage key.

    Raises:
        InvalidName: Empty, starting with a dot or dash, or holding ``/`` or other characters.
    """
    if not _NAME.fullmatch(name):
        raise InvalidName(
            f"{what} {name!r} is not usable: use letters, digits, '_', '-' and '.', "
            f"starting with a letter or digit"
        )
    return name


def make_version_id(name: str, version: SemVer, at: dt.datetime) -> str:
    """``{name}_{version}_{YYYYmmdd_HHMM}``, the time in UTC (a naive time is taken as UTC)."""
    check_name(name)
    utc = at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)
    return f"{name}_{version}_{utc.strftime(_STAMP)}"


@dataclass(frozen=True)
class VersionId:
    """The parts of a version id."""

    name: str
    version: SemVer
    created: dt.datetime


def parse_version_id(version_id: str) -> VersionId:
    """Split ``eta_mlp_1.3.0_20261121_1402`` into name, version and UTC minute.

    Raises:
        InvalidVersion: The id does not have the ``{name}_{semver}_{YYYYmmdd_HHMM}`` shape.
    """
    match = _VERSION_ID.fullmatch(version_id)
    if match is None or not _NAME.fullmatch(match["name"]):
        raise InvalidVersion(f"{version_id!r} is not a version id like eta_mlp_1.3.0_20261121_1402")
    try:
        created = dt.datetime.strptime(match["stamp"], _STAMP).replace(tzinfo=dt.UTC)
    except ValueError as err:
        raise InvalidVersion(f"{version_id!r} has an impossible timestamp: {err}") from err
    return VersionId(match["name"], SemVer.parse(match["semver"]), created)
