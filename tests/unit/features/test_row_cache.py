"""The row cache answers an entry younger than its TTL, with the versions it was read under,
keeps at most its size, and is off unless both bounds are set."""

from __future__ import annotations

import pytest

from relay.features.row_cache import RowCache, versions_key
from relay.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_an_entry_is_answered_until_it_is_as_old_as_the_ttl():
    cache = RowCache(ttl_s=1.0, max_rows=10, clock=Clock())
    cache.put("k", "row", (b"1",), now=50.0)
    entry = cache.get("k", now=50.999)
    assert entry is not None and entry.value == "row" and entry.version == (b"1",)
    assert cache.get("k", now=51.0) is None  # as old as the bound: read again
    assert cache.get("other", now=50.0) is None


def test_a_new_read_replaces_the_entry_with_its_own_time_and_versions():
    cache = RowCache(ttl_s=1.0, max_rows=10)
    cache.put("k", "old", (b"1",), now=50.0)
    cache.put("k", "new", (b"2", None), now=50.9)
    entry = cache.get("k", now=51.5)
    assert entry is not None and entry.value == "new" and entry.version == (b"2", None)
    assert len(cache) == 1


def test_the_least_recently_stored_entries_go_first_past_the_size():
    cache = RowCache(ttl_s=10.0, max_rows=2)
    cache.put("a", 1, (), now=0.0)
    cache.put("b", 2, (), now=0.0)
    cache.put("a", 3, (), now=1.0)  # stored again: now the newest
    cache.put("c", 4, (), now=1.0)
    assert cache.get("b", now=1.0) is None
    assert [cache.get(k, now=1.0) is not None for k in ("a", "c")] == [True, True]
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize(("ttl_s", "max_rows"), [(0.0, 10), (1.0, 0)])
def test_a_cache_without_a_bound_is_refused(ttl_s, max_rows):
    with pytest.raises(ValueError, match="ttl_s > 0"):
        RowCache(ttl_s=ttl_s, max_rows=max_rows)


def test_the_settings_bound_the_cache_and_zero_turns_it_off(monkeypatch, tmp_path):
    monkeypatch.setenv("RELAY_HOME", str(tmp_path))
    s = Settings()
    assert s.feast.row_cache_ttl_s == 1.0 and s.feast.pipelined_read
    monkeypatch.setenv("RELAY_FEAST__ROW_CACHE_TTL_S", "0")
    monkeypatch.setenv("RELAY_FEAST__ROW_CACHE_MAX_ROWS", "5")
    s = Settings()
    assert s.feast.row_cache_ttl_s == 0.0 and s.feast.row_cache_max_rows == 5
    monkeypatch.setenv("RELAY_FEAST__ROW_CACHE_TTL_S", "-1")
    with pytest.raises(ValueError, match="row_cache_ttl_s"):
        Settings()


def test_each_project_has_its_own_versions():
    assert versions_key("a") != versions_key("b")
    assert versions_key("relay_eta") == b"relay:feature_versions:relay_eta"
