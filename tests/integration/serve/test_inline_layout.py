"""The inline layout on a real local Ray Serve: a rollout's deploy and free steps start no model
app; the router replica holds the split's versions, and a model app left from the split layout
is freed once it takes no traffic."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.registry.errors import VersionNotFound
from relay.rollout.controller import apply_rule
from relay.rollout.manual import free_idle_models
from relay.rollout.plan import TrafficRule
from relay.serve.traffic import TrafficSplit
from relay.settings import Settings, get_settings
from tests.integration.serve.test_serving import _order, _post, two_versions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inline(lake_days, tmp_path_factory) -> Iterator[dict[str, Any]]:
    import ray
    from ray import serve

    from relay.serve import control
    from tests.integration.conftest import _free_port

    made = two_versions(lake_days, tmp_path_factory.mktemp("runs"), epochs=(2, 2))
    s = get_settings().model_copy(deep=True)
    s.serving.port = _free_port()
    s.serving.layout = "inline"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        control.start_serve(s)
        orders = made["orders"]
        rows = orders[orders["created_at"].dt.date == lake_days[-1]].head(40)
        yield {
            "v1": made["v1"],
            "v2": made["v2"],
            "settings": s,
            "url": control.endpoint(s),
            "batch": [_order(r, f"inline-{i}") for i, (_, r) in enumerate(rows.iterrows())],
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def _model_apps() -> set[str]:
    from ray import serve

    from relay.serve.traffic_state import model_app_name

    prefix = model_app_name("")
    return {name for name in serve.status().applications if name.startswith(prefix)}


def _versions_answering(url: str, batch: list[dict[str, Any]]) -> Counter[str]:
    status, body = _post(url, {"orders": batch})
    assert status == 200, body
    return Counter(p["model_version"] for p in body["predictions"])


def test_a_rollout_in_the_inline_layout_starts_no_model_app(inline: dict[str, Any]) -> None:
    from relay.serve import control

    s, v1, v2 = inline["settings"], inline["v1"], inline["v2"]
    # The first deploy: the router, which loads v1 itself.
    assert apply_rule(control, TrafficRule(stable=v1), s) == [
        f"deployed {v1}",
        f"traffic: {v1} alone",
    ]
    assert _model_apps() == set()
    assert control.deployed_models(s) == [v1]
    assert set(_versions_answering(inline["url"], inline["batch"])) == {v1}

    # A canary step: v2 is loaded by the router beside v1; still no model app.
    rule = TrafficRule(stable=v1, candidate=v2, candidate_share=0.5)
    assert apply_rule(control, rule, s) == [
        f"deployed {v2}",
        f"traffic: {v2} on 50% of all orders, {v1} the rest",
    ]
    assert _model_apps() == set()
    assert control.deployed_models(s) == sorted([v1, v2])
    assert set(_versions_answering(inline["url"], inline["batch"])) == {v1, v2}

    # The rollback and its free step: v2 leaves the router; nothing is left to delete.
    assert apply_rule(control, TrafficRule(stable=v1), s) == [f"traffic: {v1} alone"]
    control.remove_model(v2, s)
    assert control.deployed_models(s) == [v1]
    assert free_idle_models(control, s, emit=lambda _: None) == []
    assert set(_versions_answering(inline["url"], inline["batch"])) == {v1}


def test_a_version_the_registry_lacks_fails_at_deploy_and_the_split_stays(
    inline: dict[str, Any],
) -> None:
    from relay.serve import control

    s, v1 = inline["settings"], inline["v1"]
    control.set_traffic(TrafficSplit(stable=v1), s)
    before = control.current_traffic(s)
    with pytest.raises(VersionNotFound, match=r"eta_mlp_9\.9\.9_20261121_1402"):
        control.deploy_model("eta_mlp_9.9.9_20261121_1402", s)
    assert control.current_traffic(s) == before
    assert _model_apps() == set()


def test_a_load_check_past_its_timeout_fails_the_deploy_naming_the_setting(
    inline: dict[str, Any],
) -> None:
    from relay.serve import control

    hurried = inline["settings"].model_copy(deep=True)
    hurried.serving.inline_check_timeout_s = 0.001  # a load takes milliseconds at the least
    with pytest.raises(TimeoutError, match="INLINE_CHECK_TIMEOUT_S"):
        control.deploy_model(inline["v2"], hurried)
    assert _model_apps() == set()


def test_a_model_app_left_from_the_split_layout_is_freed_once_idle(
    inline: dict[str, Any],
) -> None:
    from relay.serve import control
    from relay.serve.traffic_state import model_app_name

    s, v1, v2 = inline["settings"], inline["v1"], inline["v2"]
    split_layout: Settings = s.model_copy(deep=True)
    split_layout.serving.layout = "split"
    control.deploy_model(v2, split_layout)  # as a cluster run in the split layout left it
    control.set_traffic(TrafficSplit(stable=v1), s)
    assert _model_apps() == {model_app_name(v2)}
    assert control.deployed_models(s) == sorted([v1, v2])
    assert free_idle_models(control, s, emit=lambda _: None) == [v2]
    assert _model_apps() == set()
    assert set(_versions_answering(inline["url"], inline["batch"])) == {v1}


def test_a_version_whose_artifact_was_tampered_with_fails_at_deploy(
    inline: dict[str, Any],
) -> None:
    """The check a model app's start gave (every artifact against its sha256), given inline."""
    from relay.registry import ArtifactIntegrityError, Registry
    from relay.serve import control

    s, v1, v2 = inline["settings"], inline["v1"], inline["v2"]
    control.set_traffic(TrafficSplit(stable=v1), s)
    blob = Path(s.registry.uri or "") / Registry(s).get(v2).artifact("model.pt").key
    original = blob.read_bytes()
    tampered = bytearray(original)
    tampered[-2] ^= 0xFF  # same size, one byte changed
    blob.write_bytes(bytes(tampered))
    try:
        with pytest.raises(ArtifactIntegrityError, match=r"model\.pt"):
            control.deploy_model(v2, s)
    finally:
        blob.write_bytes(original)
    assert control.current_traffic(s) == TrafficSplit(stable=v1)
    assert _model_apps() == set()
