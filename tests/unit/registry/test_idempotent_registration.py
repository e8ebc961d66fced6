"""Idempotent registration on a registry on local disk (no services): one key, one version, even
when registrations with that key interleave at any write."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from relay.registry import Lineage, LocalStore, ModelState, Registry, VersionConflict
from relay.settings import Settings

NOW = dt.datetime(2026, 11, 21, 14, 2, tzinfo=dt.UTC)
LINEAGE = Lineage(feature_service="eta_v1", training_run="runs/manual__1")


class HookedStore(LocalStore):
    """A local store that runs ``hook`` once, just before the first create-only write of a key
    matching ``when``: another registration cut in exactly there."""

    def __init__(self, root: Path, when: Callable[[str], bool]) -> None:
        super().__init__(root)
        self.when = when
        self.hook: Callable[[], None] | None = None

    def cas_json(self, key: str, doc: Mapping[str, Any], expected_etag: str | None) -> str:
        hook, self.hook = self.hook, None
        if hook is not None and expected_etag is None and self.when(key):
            hook()
        elif hook is not None:
            self.hook = hook  # not the write we wait for: keep it
        return super().cas_json(key, doc, expected_etag)


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def _registry(settings: Settings, store: LocalStore | None = None) -> Registry:
    return Registry(settings, store=store, clock=lambda: NOW)


def _register(reg: Registry, weights: bytes = b"weights", key: str | None = "k1") -> str:
    version = reg.register(
        {"model.pt": weights}, lineage=LINEAGE, owner="test", key=key, state=ModelState.TRAINED
    )
    return version.id


def test_the_same_key_twice_gives_one_version_as_it_is_now(tmp_path):
    reg = _registry(_settings(tmp_path))
    first = _register(reg)
    reg.transition(first, ModelState.EVALUATING, "gate started, then the task died")
    again = reg.register(
        {"model.pt": b"weights"}, lineage=LINEAGE, owner="retry", key="k1", state="trained"
    )
    assert again.id == first and again.state is ModelState.EVALUATING  # not re-registered
    assert [str(v) for v in reg.versions_of()] == ["0.1.0"]
    assert reg.get(first).registration_key == "k1"


def test_another_key_and_no_key_give_new_versions(tmp_path):
    reg = _registry(_settings(tmp_path))
    ids = [_register(reg), _register(reg, b"other", key="k2"), _register(reg, key=None)]
    ids.append(_register(reg, key=None))  # without a key registration is never deduplicated
    assert len(set(ids)) == 4
    assert [str(v) for v in reg.versions_of()] == ["0.1.0", "0.2.0", "0.3.0", "0.4.0"]


def test_a_key_that_is_no_storage_name_is_refused(tmp_path):
    with pytest.raises(Exception, match="registration key"):
        _register(_registry(_settings(tmp_path)), key="../x")


def _hooked(tmp_path: Path, when: Callable[[str], bool]) -> tuple[Registry, Registry, HookedStore]:
    """A (whose store runs the hook) and B, on the same registry folder."""
    s = _settings(tmp_path)
    store = HookedStore(str(s.registry.uri), when)
    return _registry(s, store), _registry(s), store


def test_a_registration_that_claims_first_wins_and_the_other_follows_it(tmp_path):
    # B registers the same key between A's look at the claim (none) and A's claim write.
    a, b, store = _hooked(tmp_path, lambda key: "/registrations/" in key)
    theirs: list[str] = []
    store.hook = lambda: theirs.append(_register(b))
    ours = _register(a)
    assert theirs == [ours]
    assert len(a.versions_of()) == 1


def test_a_claim_left_before_its_version_is_completed_by_the_next_registration(tmp_path):
    # B arrives after A's claim, before A's version write: B completes A's claim, A finds it.
    a, b, store = _hooked(tmp_path, lambda key: "/versions/" in key)
    theirs: list[str] = []
    store.hook = lambda: theirs.append(_register(b))
    ours = _register(a)
    assert theirs == [ours]
    assert len(a.versions_of()) == 1


def test_a_claimed_number_taken_by_another_registration_is_renumbered(tmp_path):
    # An unrelated registration takes 0.1.0 between A's claim and A's version write.
    a, b, store = _hooked(tmp_path, lambda key: "/versions/" in key)
    other: list[str] = []
    store.hook = lambda: other.append(_register(b, b"unrelated", key=None))
    ours = _register(a)
    assert other[0] != ours
    assert a.get(ours).version == "0.2.0" and a.get(other[0]).version == "0.1.0"
    assert _register(b) == ours  # and the key still leads to it
    assert len(a.versions_of()) == 2


def test_concurrent_registrations_with_one_key_end_with_one_version(tmp_path):
    s = _settings(tmp_path)
    start = threading.Barrier(6)
    got: list[str] = []
    errors: list[Exception] = []

    def register() -> None:
        reg = _registry(s)
        start.wait()
        try:
            got.append(_register(reg))
        except VersionConflict as err:  # allowed: "register again" (and it gives the same one)
            errors.append(err)
            got.append(_register(reg))

    threads = [threading.Thread(target=register) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and len(set(got)) == 1
    assert len(_registry(s).versions_of()) == 1
