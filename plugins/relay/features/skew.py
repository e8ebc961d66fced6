"""Training-serving skew: what an order was served, against the training row it would get.

For the orders served on a day, :func:`skew_for_day` rebuilds each order's point-in-time
training row from the offline store (:func:`relay.features.store.training_frame`, the rows the
next model learns from) and compares it, feature by feature, with the features the serving log
recorded when the order was answered. :func:`compare` is the pure part: per feature, the share of
served values that differ beyond a float tolerance, the largest difference, and examples.
:func:`write_skew_report` writes the HTML page ``relay features skew --date D`` opens.

A feature served from a snapshot older than the order's own hour differs here: that is the
staleness this measures, not noise. Categorical values must be equal; numbers within
``atol + rtol × |training|`` (missing on both sides counts as equal).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Float tolerance of a match: served and training values pass through the same arithmetic, so
#: anything beyond float32 rounding is a real difference.
RTOL = 1e-5
ATOL = 1e-6
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class FeatureSkew:
    """One feature's agreement between served values and training rows.

    Attributes:
        feature: the feature's name.
        compared: orders compared.
        differing: orders whose served value differs from the training row's.
        max_abs_diff: the largest absolute difference (numbers; None for categories).
        examples: a few differing orders: ``(order_id, served, training)``.
    """

    feature: str
    compared: int
    differing: int
    max_abs_diff: float | None
    examples: list[tuple[str, Any, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """The share of served values that differed (0 when nothing was compared)."""
        return self.differing / self.compared if self.compared else 0.0


@dataclass(frozen=True)
class Skew:
    """The whole comparison.

    Attributes:
        day: the day served (None when compared outside a day).
        orders: served orders that had a training row to compare with.
        unmatched: served orders with no training row (not in the lake's orders).
        features: per-feature results, worst first.
        only_served: features logged at serving but absent from the training rows.
        only_training: features in the training rows the serving log lacks.
    """

    day: dt.date | None
    orders: int
    unmatched: int
    features: list[FeatureSkew]
    only_served: list[str] = field(default_factory=list)
    only_training: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Whether every compared feature matched on every order, with nothing one-sided."""
        return (
            all(f.differing == 0 for f in self.features)
            and not self.only_served
            and not self.only_training
        )

    def table(self) -> list[dict[str, Any]]:
        """One row per feature: name, compared, differing, share and largest difference."""
        return [
            {
                "feature": f.feature,
                "compared": f.compared,
                "differing": f.differing,
                "rate": round(f.rate, 4),
                "max_abs_diff": f.max_abs_diff,
            }
            for f in self.features
        ]


def _differs(served: pd.Series, training: pd.Series) -> tuple[np.ndarray, float | None]:
    """Which pairs differ, and the largest absolute difference when both sides are numbers."""
    both_missing = (served.isna() & training.isna()).to_numpy()
    s_num = pd.to_numeric(served, errors="coerce")
    t_num = pd.to_numeric(training, errors="coerce")
    numeric = bool(
        s_num.notna().eq(served.notna()).all() and t_num.notna().eq(training.notna()).all()
    )
    if numeric:
        s, t = s_num.to_numpy(float), t_num.to_numpy(float)
        close = np.isclose(s, t, rtol=RTOL, atol=ATOL)
        differ = ~(close | both_missing)
        gaps = np.abs(s - t)[differ & ~np.isnan(s - t)]
        return differ, (float(gaps.max()) if gaps.size else (0.0 if not differ.any() else None))
    equal = served.astype(str).to_numpy() == training.astype(str).to_numpy()
    return ~(equal | both_missing), None


def compare(served: pd.DataFrame, training: pd.DataFrame, day: dt.date | None = None) -> Skew:
    """Compare served features with training rows, on ``order_id``.

    Args:
        served: ``order_id`` and the features as served (one row per served order; the first
            of repeated orders is kept).
        training: ``order_id`` and the features of each order's point-in-time training row.
        day: the day the orders were served, for the report.

    Returns:
        The per-feature comparison over the orders present on both sides, worst first.
    """
    served = served.drop_duplicates("order_id", keep="first").astype({"order_id": str})
    training = training.drop_duplicates("order_id", keep="first").astype({"order_id": str})
    s_cols = set(served.columns) - {"order_id"}
    t_cols = set(training.columns) - {"order_id"}
    both = sorted(s_cols & t_cols)
    joined = served[["order_id", *both]].merge(
        training[["order_id", *both]], on="order_id", how="inner", suffixes=("_s", "_t")
    )
    results = []
    for name in both:
        s, t = joined[f"{name}_s"], joined[f"{name}_t"]
        differ, gap = _differs(s, t)
        examples = [
            (str(joined["order_id"].iloc[i]), s.iloc[i], t.iloc[i])
            for i in np.flatnonzero(differ)[:MAX_EXAMPLES]
        ]
        results.append(FeatureSkew(name, len(joined), int(differ.sum()), gap, examples))
    results.sort(key=lambda f: (-f.rate, f.feature))
    return Skew(
        day=day,
        orders=len(joined),
        unmatched=int((~served["order_id"].isin(training["order_id"])).sum()),
        features=results,
        only_served=sorted(s_cols - t_cols),
        only_training=sorted(t_cols - s_cols),
    )


def skew_for_day(
    served_on: dt.date,
    orders_of: dt.date | None = None,
    settings: Any = None,
    since: dt.datetime | None = None,
) -> Skew:
    """The skew of every order served on ``served_on`` (UTC; the serving log's partition)
    whose order landed in the lake on ``orders_of`` (default: the same day; a replay serves
    a past day's orders today); with ``since``, only the predictions served from then on.

    Raises:
        PartitionNotFound: nothing was served that day, or no order of ``orders_of`` landed.
    """
    from relay.data.lake import RAW_ORDERS, VALIDATED_ORDERS, Lake
    from relay.features.catalog import CATALOG, names
    from relay.features.store import training_frame
    from relay.serve.log_read import features_of, read_serving_log

    lake = Lake(settings)
    day = orders_of or served_on
    log = read_serving_log(lake, served_on, served_on)
    if since is not None:
        log = log[log["requested_at"] >= pd.Timestamp(since)].reset_index(drop=True)
    served = features_of(log)
    served.insert(0, "order_id", log["order_id"].astype(str))
    # The validated orders are what training reads; a day not validated yet has its raw ones.
    dataset = VALIDATED_ORDERS if lake.exists(VALIDATED_ORDERS, day) else RAW_ORDERS
    orders = lake.read(dataset, day)
    orders = orders[orders["order_id"].astype(str).isin(served["order_id"])]
    orders = orders.reset_index(drop=True)
    rows = training_frame(orders, settings)
    rows["order_id"] = orders["order_id"].astype(str).to_numpy()
    keep = ["order_id", *[c for c in names(CATALOG) if c in rows.columns]]
    return compare(served, rows[keep], served_on)


def write_skew_report(path: Path | str, skew: Skew) -> Path:
    """A self-contained HTML page: the mismatch share per feature (a bar chart, plotly.js
    embedded once) and the table with the largest differences and examples."""
    import html

    import plotly.graph_objects as go

    names = [f.feature for f in skew.features]
    fig = go.Figure(go.Bar(x=[f.rate for f in skew.features], y=names, orientation="h"))
    fig.update_layout(
        title="Share of served values that differ from the training row",
        xaxis={"tickformat": ".0%", "range": [0, 1]},
        yaxis={"autorange": "reversed"},
        height=120 + 28 * len(names),
        margin={"l": 220},
    )
    rows = "".join(
        "<tr><td>{}</td><td>{:,}</td><td>{:,}</td><td>{:.1%}</td><td>{}</td><td>{}</td></tr>".format(
            html.escape(f.feature),
            f.compared,
            f.differing,
            f.rate,
            "" if f.max_abs_diff is None else f"{f.max_abs_diff:.4g}",
            html.escape("; ".join(f"{o}: served {a!r}, training {b!r}" for o, a, b in f.examples)),
        )
        for f in skew.features
    )
    verdict = "no skew" if skew.clean else "SKEW: served features differ from the training rows"
    one_sided = ""
    if skew.only_served or skew.only_training:
        one_sided = (
            f"<p>Only served: {html.escape(', '.join(skew.only_served) or '—')}. "
            f"Only in training: {html.escape(', '.join(skew.only_training) or '—')}.</p>"
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Relay · training-serving skew {skew.day or ""}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:left}}
tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>Training-serving skew {skew.day or ""}</h1>
<p><b>{verdict}</b>. {skew.orders:,} served orders compared with their point-in-time training
rows ({skew.unmatched:,} served orders had none). Numbers match within
{ATOL:g} + {RTOL:g} × |training value|; categories must be equal.</p>{one_sided}
{fig.to_html(full_html=False, include_plotlyjs=True, config={"displaylogo": False})}
<table><tr><th>feature</th><th>compared</th><th>differing</th><th>share</th>
<th>largest difference</th><th>examples</th></tr>{rows}</table></body></html>"""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
