"""A version's deployment is sized from its stored needs, within the settings' floor."""

from __future__ import annotations

from relay.registry import ServingRequirements
from relay.serve.sizing import model_replica_options
from relay.settings import ServingSettings


def test_unstated_needs_take_the_settings() -> None:
    sv = ServingSettings(model_replicas=2, model_cpus=0.5)
    got = model_replica_options(None, sv)
    assert got == {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}
    assert model_replica_options(ServingRequirements(), sv) == got


def test_a_version_that_needs_more_gets_more_and_never_fewer_replicas_than_the_floor() -> None:
    sv = ServingSettings(model_replicas=2, model_cpus=0.5)
    big = ServingRequirements(cpus=2.0, memory_mb=3072, replicas=4)
    got = model_replica_options(big, sv)
    assert got["num_replicas"] == 4
    assert got["ray_actor_options"] == {"num_cpus": 2.0, "memory": 3072 * 1024 * 1024}
    # One replica asked for, two the floor (the prod profile's): two.
    assert model_replica_options(ServingRequirements(replicas=1), sv)["num_replicas"] == 2


def test_old_records_with_the_former_defaults_still_read() -> None:
    stored = {"memory_mb": 512, "cpus": 1.0, "latency_sla_ms": 50.0, "qps_limit": 100}
    needs = ServingRequirements.model_validate(stored)
    assert needs.replicas is None and needs.cpus == 1.0


def test_gpus_come_from_the_settings_unless_the_version_states_them() -> None:
    cpu_only = ServingSettings(model_gpus=0.0)
    assert "num_gpus" not in model_replica_options(None, cpu_only)["ray_actor_options"]
    gpu_node = ServingSettings(model_gpus=1.0)
    assert model_replica_options(None, gpu_node)["ray_actor_options"]["num_gpus"] == 1.0
    shared = ServingRequirements(gpus=0.25)
    assert model_replica_options(shared, gpu_node)["ray_actor_options"]["num_gpus"] == 0.25
    assert (
        "num_gpus"
        not in model_replica_options(ServingRequirements(gpus=0.0), gpu_node)["ray_actor_options"]
    )  # a version that says CPU stays on CPU


def test_a_model_serves_on_the_gpu_only_where_torch_sees_one(monkeypatch) -> None:
    import torch

    from relay.serve.loader import serving_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert serving_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert serving_device() == "cuda"  # outside Ray: the plain app, a script
