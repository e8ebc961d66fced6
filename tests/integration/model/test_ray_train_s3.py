"""Ray Train with no shared disk: checkpoints on S3 (moto's server), the model written to the
run folder on S3 through this node's scratch, as the prod profile's train job does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from relay.flows import run_store
from relay.model.ray_train import TrainRequest, run_training
from relay.settings import get_settings

pytestmark = pytest.mark.slow
BUCKET = "relay-artifacts-ray"


@pytest.fixture(scope="module")
def s3_ray(s3_endpoint: str) -> Iterator[str]:
    """A local Ray (2 CPUs) whose processes, like this driver, hold the AWS keys in their
    environment, as a prod node's do: the keys never travel through Ray."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET
        )
        ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
        try:
            yield s3_endpoint
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def small_training_set(lake_days, tmp_path_factory) -> str:
    from relay.data.lake import VALIDATED_ORDERS, Lake
    from relay.features.store import apply, training_frame

    apply()
    orders = Lake().read(VALIDATED_ORDERS, lake_days[-1]).head(1500)
    path = tmp_path_factory.mktemp("ts") / "training.parquet"
    training_frame(orders).to_parquet(path, index=False)
    return str(path)


def test_checkpoints_and_the_model_land_in_the_bucket(
    s3_ray: str, small_training_set: str, tmp_path: Path
) -> None:
    s = get_settings().model_copy(deep=True)
    s.s3.endpoint_url = s3_ray
    s.runs = type(s.runs)(uri=f"s3://{BUCKET}/eta/runs", scratch=tmp_path / "scratch")
    s.importance.enabled = False
    s.optimise.enabled = False
    run = run_store.run_uri("s3_run", s)
    storage = f"s3://{BUCKET}/eta/runs/s3_run/ray_results"
    with run_store.workspace(f"{run}/model", s, fetch=False) as folder:
        res = run_training(
            TrainRequest(
                training_set=small_training_set,
                output_dir=folder,
                name="t_s3",
                storage_path=storage,
                num_workers=1,
                max_epochs=2,
                patience=2,
            ),
            s,
        )
    assert res.checkpoint_path is not None
    assert res.checkpoint_path.startswith(f"{storage}/t_s3/checkpoint_"), res.checkpoint_path

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_ray,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    checkpoint = res.checkpoint_path.removeprefix(f"s3://{BUCKET}/")
    assert f"{checkpoint}/state.pt" in keys, keys
    assert "eta/runs/s3_run/model/model.pt" in keys
    assert "eta/runs/s3_run/model/data/holdout.parquet" in keys
    # Nothing under the node's default local storage: the run never needed a shared disk.
    assert not (s.home / "ray_results" / "t_s3").exists()
