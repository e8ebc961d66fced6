"""The model registry on a local folder and on S3 over HTTP (moto's server), as with MinIO."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import torch

from relay.registry import (
    ArtifactIntegrityError,
    ArtifactNotFound,
    BumpKind,
    ConcurrentUpdate,
    IllegalTransition,
    InvalidPromotion,
    Lineage,
    LocalStore,
    ModelState,
    ModelVersion,
    NothingToRollBack,
    Registry,
    RolledBackVersion,
    S3Store,
    ServingRequirements,
    Stage,
    StagePointer,
    TrainingInfo,
    VersionConflict,
    VersionNotFound,
)
from relay.settings import Settings

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 21, 14, 2, tzinfo=dt.UTC)
PREPROCESSOR = b'{"scaler": {"mean": [1.0, 2.0], "std": [0.5, 0.25]}}'
REPORT = b"<html><body>MAE 6.1 min</body></html>"


@dataclass
class Backend:
    """A registry's settings plus a way to reach its bytes without going through the registry."""

    kind: str
    settings: Settings
    raw_put: Callable[[str, bytes], None]
    raw_keys: Callable[[], list[str]]

    def registry(self) -> Registry:
        return Registry(self.settings, clock=lambda: NOW)


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path, monkeypatch) -> Backend:
    if request.param == "local":
        settings = Settings(home=tmp_path)  # the default: {artifacts}/registry
        root = Path(settings.registry.uri or "")

        def local_put(key: str, data: bytes) -> None:
            (root / key).write_bytes(data)

        def local_keys() -> list[str]:
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

        return Backend("local", settings, local_put, local_keys)

    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    request.getfixturevalue("atomic_moto_puts")
    bucket = f"relay-registry-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    settings = Settings(
        home=tmp_path, registry={"uri": f"s3://{bucket}/registry"}, s3={"endpoint_url": endpoint}
    )

    def s3_put(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"registry/{key}", Body=data)

    def s3_keys() -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return sorted(obj["Key"].removeprefix("registry/") for obj in listed)

    return Backend("s3", settings, s3_put, s3_keys)


def _weights(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(4, 2).state_dict(), buffer)
    return buffer.getvalue()


def _register(
    registry: Registry, *, parent: str | None = None, bump: BumpKind = "minor", seed: int = 0
) -> ModelVersion:
    return registry.register(
        {"model.pt": _weights(seed), "preprocessor.json": PREPROCESSOR, "evaluation.html": REPORT},
        lineage=Lineage(
            feature_service="eta_v1",
            data_partitions=["2026-11-19", "2026-11-20"],
            code_commit="a9f1990",
            config_hash="c0ffee",
            parent_version_id=parent,
        ),
        owner="ci",
        training=TrainingInfo(sample_count=6000, feature_count=12, metrics={"mae_minutes": 6.1}),
        bump=bump,
    )


def _validate(registry: Registry, version_id: str) -> None:
    for state in ("training", "trained", "evaluating", "validated"):
        registry.transition(version_id, state, f"pipeline reached {state}")


def test_register_get_list_round_trip(backend, tmp_path):
    registry = backend.registry()
    assert registry.list_versions() == []
    assert registry.stage_version("production") is None

    weights_path = tmp_path / "model.pt"
    weights_path.write_bytes(_weights())
    v1 = registry.register(
        {"model.pt": weights_path, "preprocessor.json": PREPROCESSOR, "evaluation.html": REPORT},
        lineage=Lineage(feature_service="eta_v1", data_partitions=["2026-11-20"]),
        owner="ana",
        training=TrainingInfo(
            dataset_partitions=["2026-11-20"],
            sample_count=3000,
            feature_count=12,
            hyperparameters={"hidden_units": 128, "activation": "relu", "layers": [128, 64]},
            metrics={"mae_minutes": 6.1, "p90_abs_error_minutes": 12.0},
        ),
        serving=ServingRequirements(memory_mb=256, cpus=0.5, latency_sla_ms=30, qps_limit=200),
    )
    assert v1.id == "eta_mlp_0.1.0_20261121_1402"
    assert (v1.name, v1.version, v1.owner, v1.created_at) == ("eta_mlp", "0.1.0", "ana", NOW)
    assert (v1.state, v1.stage) == (ModelState.CREATED, None)
    assert [a.name for a in v1.artifacts] == ["model.pt", "preprocessor.json", "evaluation.html"]
    pre = v1.artifact("preprocessor.json")
    assert (pre.sha256, pre.size) == (hashlib.sha256(PREPROCESSOR).hexdigest(), len(PREPROCESSOR))
    assert v1.history[0].to_state is ModelState.CREATED and v1.history[0].at == NOW

    assert registry.get(v1.id) == v1
    assert ModelVersion.model_validate_json(v1.model_dump_json()) == v1
    reader = backend.registry()  # another process's view
    assert reader.get(v1.id) == v1

    v2 = _register(registry, bump="patch")
    v3 = _register(registry, bump="major")
    assert [v.version for v in (v2, v3)] == ["0.1.1", "1.0.0"]
    assert [v.id for v in reader.list_versions()] == [v1.id, v2.id, v3.id]
    assert [v.id for v in reader.list_versions("eta_mlp")] == [v1.id, v2.id, v3.id]
    assert reader.list_versions("other_model") == []
    assert str(reader.next_version("minor")) == "1.1.0"

    assert reader.load_artifact(v1.id, "preprocessor.json") == PREPROCESSOR
    assert reader.load_artifact(v1.id, "evaluation.html") == REPORT
    state = reader.load_torch_state(v1.id, "model.pt")
    assert torch.equal(state["weight"], torch.load(weights_path, weights_only=True)["weight"])

    with pytest.raises(VersionNotFound):
        reader.get("eta_mlp_9.9.9_20261121_1402")
    with pytest.raises(VersionNotFound):
        reader.get("eta_mlp_0.1.0_20250101_0000")  # right version, wrong id
    with pytest.raises(ArtifactNotFound, match=r"model\.pt"):
        reader.load_artifact(v1.id, "missing.bin")

    all_keys = backend.raw_keys()
    assert not [k for k in all_keys if k.endswith(".tmp")]  # no temp file left behind
    # Dot-names are the local store's lock files; identical bytes are stored once.
    keys = [k for k in all_keys if not k.rpartition("/")[2].startswith(".")]
    assert [k for k in keys if "/versions/" in k] == [
        "eta_mlp/versions/0.1.0.json",
        "eta_mlp/versions/0.1.1.json",
        "eta_mlp/versions/1.0.0.json",
    ]
    assert len([k for k in keys if "/blobs/" in k]) == 3


class SimulatedCrash(RuntimeError):
    """The process dies between two writes."""


def _crash_on_write(monkeypatch, registry: Registry, n: int) -> list[str]:
    """Make the registry's n-th write (blob or JSON) raise; returns the keys written before."""
    written: list[str] = []
    store = registry.store
    put_bytes, cas_json = store.put_bytes, store.cas_json

    def count(key: str) -> None:
        if len(written) + 1 == n:
            raise SimulatedCrash(f"killed while writing {key}")
        written.append(key)

    def crashing_put(key, data):
        count(key)
        put_bytes(key, data)

    def crashing_cas(key, doc, expected_etag):
        count(key)
        return cas_json(key, doc, expected_etag)

    monkeypatch.setattr(store, "put_bytes", crashing_put)
    monkeypatch.setattr(store, "cas_json", crashing_cas)
    return written


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4], ids=["blob1", "blob2", "blob3", "metadata"])
def test_crash_between_writes_leaves_the_previous_state(backend, monkeypatch, crash_at):
    v1 = _register(backend.registry())
    crashing = backend.registry()
    written = _crash_on_write(monkeypatch, crashing, crash_at)
    with pytest.raises(SimulatedCrash):
        _register(crashing, seed=1)
    assert len(written) == crash_at - 1
    assert all("/blobs/" in key for key in written)  # the metadata is always the last write

    reader = backend.registry()
    assert [v.id for v in reader.list_versions()] == [v1.id]
    assert reader.get(v1.id) == v1
    assert reader.load_artifact(v1.id, "preprocessor.json") == PREPROCESSOR
    with pytest.raises(VersionNotFound):
        reader.get("eta_mlp_0.2.0_20261121_1402")
    # Nothing was claimed: a retry takes the same version number.
    retried = _register(reader, seed=1)
    assert retried.version == "0.2.0"
    assert reader.load_torch_state(retried.id)["weight"].shape == (2, 4)


def test_crash_during_promotion_keeps_the_old_pointer(backend, monkeypatch):
    registry = backend.registry()
    v1, v2 = _register(registry), _register(registry, seed=1)
    _validate(registry, v1.id)
    _validate(registry, v2.id)
    registry.promote(v1.id, "production")

    crashing = backend.registry()
    _crash_on_write(monkeypatch, crashing, 1)  # the pointer write is the first write
    with pytest.raises(SimulatedCrash):
        crashing.promote(v2.id, "production", expected_current=v1.id)
    reader = backend.registry()
    production = reader.stage_version("production")
    assert production is not None and production.id == v1.id
    assert reader.get(v2.id).stage is None


def test_a_local_write_that_dies_midway_leaves_the_old_bytes(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "registry")
    store.put_bytes("eta_mlp/blobs/x", b"old")

    def dies(*args):
        raise SimulatedCrash("killed before the rename")

    monkeypatch.setattr("relay.registry.local_store.os.replace", dies)
    with pytest.raises(SimulatedCrash):
        store.put_bytes("eta_mlp/blobs/x", b"new and longer")
    with pytest.raises(SimulatedCrash):
        store.cas_json("eta_mlp/stages/production.json", {"version_id": "v"}, None)
    monkeypatch.undo()
    assert store.get_bytes("eta_mlp/blobs/x") == b"old"
    assert store.read_json("eta_mlp/stages/production.json") is None
    assert sorted(p.name for p in (tmp_path / "registry" / "eta_mlp" / "blobs").iterdir()) == ["x"]


def test_concurrent_promotions_exactly_one_wins(backend, monkeypatch):
    setup = backend.registry()
    v1, v2, v3 = (_register(setup, seed=i) for i in range(3))
    for version in (v1, v2, v3):
        _validate(setup, version.id)
    setup.promote(v1.id, "production")
    setup.transition(v1.id, "serving", "deployment healthy")

    # Both promoters read the production pointer before either writes: the worst interleaving.
    barrier = threading.Barrier(2)
    racers = [backend.registry(), backend.registry()]
    for racer in racers:
        read_json = racer.store.read_json

        def read_then_wait(key, _read=read_json):
            tagged = _read(key)
            if key.endswith("/stages/production.json"):
                barrier.wait(timeout=30)
            return tagged

        monkeypatch.setattr(racer.store, "read_json", read_then_wait)

    outcomes: dict[str, StagePointer | BaseException] = {}

    def promote(racer: Registry, version_id: str) -> None:
        try:
            outcomes[version_id] = racer.promote(version_id, "production", expected_current=v1.id)
        except BaseException as err:  # recorded and checked below
            outcomes[version_id] = err

    threads = [
        threading.Thread(target=promote, args=(racer, v.id))
        for racer, v in zip(racers, (v2, v3), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    winners = [vid for vid, out in outcomes.items() if isinstance(out, StagePointer)]
    losers = [vid for vid, out in outcomes.items() if isinstance(out, ConcurrentUpdate)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    [winner], [loser] = winners, losers
    # Refused by the compare-and-set write, not by the expected_current check before it.
    assert "changed since it was read" in str(outcomes[loser])

    reader = backend.registry()
    pointer = reader.stage_pointer("production")
    assert pointer is not None
    assert (pointer.version_id, pointer.previous_version_id) == (winner, v1.id)
    assert pointer.generation == 1
    won = reader.get(winner)
    assert (won.stage, won.state) == (Stage.PRODUCTION, ModelState.DEPLOYING)
    lost = reader.get(loser)
    assert (lost.stage, lost.state) == (None, ModelState.VALIDATED)  # untouched
    old = reader.get(v1.id)
    assert (old.stage, old.state) == (Stage.ARCHIVED, ModelState.DEPRECATED)

    # The loser read a stale pointer; asked again with a stale expectation it is refused too.
    with pytest.raises(ConcurrentUpdate, match=winner):
        reader.promote(loser, "production", expected_current=v1.id)


def test_concurrent_registrations_of_one_version_do_not_both_succeed(backend, monkeypatch):
    first, second = backend.registry(), backend.registry()
    cas_json = second.store.cas_json

    def let_first_register_meanwhile(key, doc, expected_etag):
        # `second` has computed 0.1.0 and written its blobs; `first` registers 0.1.0 now.
        _register(first, seed=1)
        return cas_json(key, doc, expected_etag)

    monkeypatch.setattr(second.store, "cas_json", let_first_register_meanwhile)
    with pytest.raises(VersionConflict, match="register again"):
        _register(second, seed=2)
    [only] = first.list_versions()
    assert only.version == "0.1.0"
    assert first.load_torch_state(only.id)["weight"].shape == (2, 4)


def test_registrations_with_one_key_interleaved_at_each_write_give_one_version(
    backend, monkeypatch
):
    # `second` is cut in on by `first` (same key) at its claim write, then at its version
    # write: both times both end with the one version (the store's create-only writes decide).
    lineage = Lineage(feature_service="eta_v1", training_run="runs/r1")

    def register(registry: Registry, key: str) -> ModelVersion:
        return registry.register({"model.pt": _weights(1)}, lineage=lineage, owner="t", key=key)

    def cut_in_at(stage: str, key: str) -> None:
        first, second = backend.registry(), backend.registry()
        cas_json, cut_in = second.store.cas_json, []

        def first_meanwhile(store_key, doc, expected_etag):
            if stage in store_key and not cut_in:
                cut_in.append(register(first, key).id)
            return cas_json(store_key, doc, expected_etag)

        monkeypatch.setattr(second.store, "cas_json", first_meanwhile)
        assert [register(second, key).id] == cut_in

    cut_in_at("/registrations/", "k1")
    cut_in_at("/versions/", "k2")
    assert [v.registration_key for v in backend.registry().list_versions()] == ["k1", "k2"]


def test_tampered_artifact_is_refused_at_load(backend):
    registry = backend.registry()
    v1 = _register(registry)
    ref = v1.artifact("model.pt")
    tampered = bytearray(registry.load_artifact(v1.id, "model.pt"))
    tampered[-1] ^= 0xFF  # same size, one bit pattern changed
    backend.raw_put(ref.key, bytes(tampered))

    actual = hashlib.sha256(tampered).hexdigest()
    with pytest.raises(ArtifactIntegrityError) as caught:
        registry.load_artifact(v1.id, "model.pt")
    err = caught.value
    assert (err.name, err.expected, err.actual) == ("model.pt", ref.sha256, actual)
    assert "model.pt" in str(err) and ref.sha256 in str(err) and actual in str(err)
    with pytest.raises(ArtifactIntegrityError):
        registry.load_torch_state(v1.id, "model.pt")
    assert registry.load_artifact(v1.id, "preprocessor.json") == PREPROCESSOR


def test_illegal_state_transition_is_refused(backend):
    registry = backend.registry()
    v1 = _register(registry)
    with pytest.raises(IllegalTransition, match="'created' to 'serving'") as caught:
        registry.transition(v1.id, "serving", "skip the queue")
    assert caught.value.legal == ("archived", "training")
    assert registry.get(v1.id) == v1  # nothing written

    with pytest.raises(InvalidPromotion, match="created"):
        registry.promote(v1.id, "production")
    with pytest.raises(InvalidPromotion, match="pointer"):
        registry.promote(v1.id, "archived")

    _validate(registry, v1.id)
    after = registry.get(v1.id)
    assert [(h.from_state, h.to_state) for h in after.history[1:]] == [
        (ModelState.CREATED, ModelState.TRAINING),
        (ModelState.TRAINING, ModelState.TRAINED),
        (ModelState.TRAINED, ModelState.EVALUATING),
        (ModelState.EVALUATING, ModelState.VALIDATED),
    ]
    assert after.history[-1].reason == "pipeline reached validated"
    assert all(h.at == NOW for h in after.history)

    archived = registry.transition(v1.id, "archived", "superseded before deployment")
    assert (archived.state, archived.stage) == (ModelState.ARCHIVED, Stage.ARCHIVED)
    with pytest.raises(IllegalTransition, match="final state"):
        registry.transition(v1.id, "deploying", "revive")


def test_rollback_restores_the_previous_production_version(backend):
    registry = backend.registry()
    v1, v2 = _register(registry), _register(registry, seed=1)
    for version in (v1, v2):
        _validate(registry, version.id)
    with pytest.raises(NothingToRollBack):
        registry.rollback()

    registry.promote(v1.id, "production", reason="first release")
    registry.transition(v1.id, "serving", "deployment healthy")
    registry.promote(v2.id, "canary")
    registry.transition(v2.id, "serving", "canary healthy")
    with pytest.raises(ConcurrentUpdate, match="not eta_mlp"):
        registry.promote(v2.id, "production", expected_current=v2.id)
    pointer = registry.promote(v2.id, "production", expected_current=v1.id)
    assert (pointer.version_id, pointer.previous_version_id) == (v2.id, v1.id)
    old = registry.get(v1.id)
    assert (old.stage, old.state) == (Stage.ARCHIVED, ModelState.DEPRECATED)
    assert old.history[-1].reason == f"replaced in production by {v2.id}"

    registry.transition(v2.id, "degraded", "drift detected")
    restored = registry.rollback(reason="drift on v2")
    assert (restored.version_id, restored.previous_version_id) == (v1.id, None)
    assert restored.generation == pointer.generation + 1
    production = backend.registry().stage_version("production")
    assert production is not None and production.id == v1.id
    assert (production.stage, production.state) == (Stage.PRODUCTION, ModelState.DEPLOYING)
    assert production.history[-1].reason == "drift on v2"
    bad = registry.get(v2.id)
    assert (bad.stage, bad.state) == (Stage.ARCHIVED, ModelState.DEPRECATED)

    with pytest.raises(NothingToRollBack):
        registry.rollback()
    # Once archived, a version cannot be rolled back to.
    registry.transition(v1.id, "serving", "redeployed")
    # v2 was rolled back: nothing automatic promotes it again; a person may, explicitly.
    assert bad.barred
    with pytest.raises(RolledBackVersion, match="was rolled back"):
        registry.promote(v2.id, "production", reason="fixed upstream data")
    registry.promote(v2.id, "production", reason="fixed upstream data", allow_rolled_back=True)
    registry.transition(v1.id, "archived", "retired")
    with pytest.raises(InvalidPromotion, match="archived"):
        registry.rollback()


def test_lineage_returns_the_parent_chain(backend):
    registry = backend.registry()
    v1 = _register(registry)
    v2 = _register(registry, parent=v1.id, seed=1)
    v3 = _register(registry, parent=v2.id, seed=2)
    chain = registry.lineage(v3.id)
    assert [r.version_id for r in chain] == [v3.id, v2.id, v1.id]
    assert [r.lineage.parent_version_id for r in chain] == [v2.id, v1.id, None]
    assert chain[0].lineage.feature_service == "eta_v1"
    assert chain[0].lineage.data_partitions == ["2026-11-19", "2026-11-20"]
    assert (chain[0].lineage.code_commit, chain[0].lineage.config_hash) == ("a9f1990", "c0ffee")
    assert [r.lineage.parent_version_id for r in registry.lineage(v1.id)] == [None]
    with pytest.raises(VersionNotFound):
        _register(registry, parent="eta_mlp_7.0.0_20261121_1402")


def test_the_uri_picks_the_backend(backend):
    store = backend.registry().store
    assert isinstance(store, LocalStore if backend.kind == "local" else S3Store)
