"""Everything that lists features derives from the one catalog (relay.features.catalog).

The derived lists equal the catalog today, and a feature added to a copy of the catalog shows up
in the Feast views, in the inputs of a preprocessor fitted with it and in drift's sets.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from relay.features import catalog
from relay.features.catalog import CATALOG, LABEL, VIEWS, Feature
from relay.model.preprocess import WEATHER_LEVELS, Preprocessor
from relay.monitor import report
from relay.settings import MonitoringSettings

# A new input of the zone view: numeric, with a PSI threshold of its own.
NEW = Feature(
    "zone_couriers_1h", "zone_stats", "int64", "numeric", "Couriers active in the zone",
    psi_threshold=0.7,
)  # fmt: skip
# A new categorical input, served by the merchant view.
NEW_CATEGORY = Feature("merchant_cuisine", "merchant_stats", "string", "vocab", "Cuisine")
EXTENDED = (*CATALOG, NEW, NEW_CATEGORY)
PATHS = {v.name: f"/lake/features/{v.name}/*/*.parquet" for v in VIEWS if v.entity}


@pytest.fixture(scope="module")
def feast_objects():
    """``feature_repo``'s builder (imports Feast: ~9 s, once for this module)."""
    from feature_repo.definitions import definitions

    def build(features: tuple[Feature, ...] = CATALOG) -> dict[str, Any]:
        return {o.name: o for o in definitions(PATHS, "http://s3.test", catalog=features)}

    return build


def _frame(features: tuple[Feature, ...], n: int = 40) -> pd.DataFrame:
    """A small training frame with a column per model input of ``features`` and the label."""
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {LABEL: rng.uniform(15, 60, n)}
    for f in features:
        if f.role == "weather":
            cols[f.name] = rng.choice(list(WEATHER_LEVELS), n)
        elif f.dtype == "string":
            cols[f.name] = [f"{f.name}_{i % 5}" for i in range(n)]
        elif f.dtype == "int64":
            cols[f.name] = rng.integers(0, 24, n)
        else:
            cols[f.name] = rng.uniform(0, 10, n)
    return pd.DataFrame(cols)


def _schema(view) -> list[tuple[str, str]]:
    return [(f.name, str(f.dtype)) for f in view.features]


def _catalog_schema(view: str, features: tuple[Feature, ...]) -> list[tuple[str, str]]:
    dtypes = {"int64": "Int64", "float64": "Float64", "string": "String"}
    return [(f.name, dtypes[f.dtype]) for f in catalog.view_features(view, features)]


def test_feast_views_serve_the_catalog(feast_objects):
    objects = feast_objects()
    for v in VIEWS:
        assert _schema(objects[v.name]) == _catalog_schema(v.name, CATALOG), v.name
        if v.entity:
            (entity,) = objects[v.name].entities
            assert objects[entity].join_key == v.entity
            assert objects[v.name].batch_source.path == PATHS[v.name]
    service = objects["eta_v1"]
    assert [p.name for p in service.feature_view_projections] == [v.name for v in VIEWS]
    served = {f.name for p in service.feature_view_projections for f in p.features}
    keys = {v.entity for v in VIEWS if v.entity}
    assert served | keys == set(catalog.model_inputs()) | {
        f.name for f in CATALOG if f.role is None
    }


def test_preprocessing_reads_the_catalog_inputs():
    prep = Preprocessor.fit(_frame(CATALOG))
    assert tuple(prep.numeric) == catalog.NUMERIC
    assert tuple(prep.vocab) == catalog.VOCAB
    assert tuple(prep.hashed) == catalog.HASHED
    assert (prep.distance, prep.weather) == (catalog.DISTANCE, catalog.WEATHER)
    assert set(prep.inputs) == set(catalog.model_inputs())


def test_drift_and_settings_follow_the_catalog():
    assert catalog.monitored() == report.MONITORED_FEATURES
    assert catalog.categorical() == report.CATEGORICAL_FEATURES
    assert MonitoringSettings().psi_thresholds == catalog.psi_thresholds()


def test_an_added_feature_reaches_feast_preprocessing_and_drift(feast_objects):
    objects = feast_objects(EXTENDED)
    assert ("zone_couriers_1h", "Int64") in _schema(objects["zone_stats"])
    assert ("merchant_cuisine", "String") in _schema(objects["merchant_stats"])
    served = {f.name for p in objects["eta_v1"].feature_view_projections for f in p.features}
    assert {NEW.name, NEW_CATEGORY.name} <= served

    frame = _frame(EXTENDED)
    before, after = Preprocessor.fit(frame), Preprocessor.fit(frame, catalog=EXTENDED)
    assert NEW.name in after.numeric and NEW_CATEGORY.name in after.vocab
    assert after.n_numeric == before.n_numeric + 2
    assert after.cardinalities == [*before.cardinalities[:3], 6, *before.cardinalities[3:]]
    arrays = after.transform(frame)
    assert arrays["numeric"].shape == (len(frame), after.n_numeric)
    assert arrays["categorical"].shape == (len(frame), len(after.cardinalities))

    assert NEW.name in catalog.monitored(EXTENDED)
    assert NEW_CATEGORY.name in catalog.categorical(EXTENDED)
    assert catalog.psi_thresholds(EXTENDED)[NEW.name] == 0.7


def test_the_network_is_sized_by_the_preprocessor():
    import torch

    from relay.model.training import build_model

    frame = _frame(EXTENDED)
    prep = Preprocessor.fit(frame, catalog=EXTENDED)
    model = build_model(prep, {"hidden_layers": 1, "hidden_units": 8})
    arrays = {k: torch.as_tensor(v) for k, v in prep.transform(frame).items()}
    assert model(**arrays).shape == (len(frame),)


def test_a_preprocessor_saved_before_it_recorded_columns_reads_the_old_inputs():
    frame = _frame(CATALOG)
    prep = Preprocessor.fit(frame)
    old = json.loads(prep.to_json())
    for key in ("numeric", "vocab", "hashed", "distance", "weather"):
        del old[key]
    loaded = Preprocessor.from_json(json.dumps(old))
    assert loaded == prep
    np.testing.assert_array_equal(
        loaded.transform(frame)["numeric"], prep.transform(frame)["numeric"]
    )


def test_a_catalog_without_one_distance_is_refused():
    from relay.errors import ConfigError

    no_distance = tuple(f for f in CATALOG if f.role != "distance")
    with pytest.raises(ConfigError, match="'distance'"):
        Preprocessor.fit(_frame(no_distance), catalog=no_distance)
