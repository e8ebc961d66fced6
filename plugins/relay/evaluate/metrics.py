"""Offline evaluation of ETA models: overall and per-slice metrics, and an HTML report.

:func:`compute_metrics` scores one set of predictions; :func:`slice_metrics` scores it per value
of each slice (zone, hour band, weather); :func:`evaluate` bundles both in an
:class:`Evaluation` for one model version, which the gate (:mod:`relay.evaluate.gate`) compares
with the champion's. :func:`write_report` renders a self-contained HTML page a person can open
offline.

Errors are ``prediction - actual`` in minutes: a positive bias means the model promises later
deliveries than happen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from relay.data.schema import LABEL

if TYPE_CHECKING:  # pragma: no cover, typing only
    import plotly.graph_objects as go

    from relay.evaluate.gate import GateVerdict

WITHIN_MINUTES = 5.0
DEFAULT_MIN_SLICE_ROWS = 50
MAX_SCATTER_POINTS = 5_000
MISSING = "missing"

# (band, first hour, last hour), inclusive; together they cover 0-23 exactly once.
HOUR_BANDS: tuple[tuple[str, int, int], ...] = (
    ("night", 0, 6),
    ("morning", 7, 10),
    ("lunch", 11, 14),
    ("afternoon", 15, 16),
    ("dinner", 17, 21),
    ("late", 22, 23),
)

# A slice is a column name, or a function of the evaluation frame giving one key per row.
SliceSpec = str | Callable[[pd.DataFrame], "pd.Series[Any]"]


@dataclass(frozen=True)
class Metrics:
    """Error metrics of one set of predictions, in minutes.

    Attributes:
        n: number of orders.
        mae: mean absolute error.
        rmse: root mean squared error.
        p90_abs_error: 90th percentile of the absolute error.
        within_5_min: share of orders predicted within ±5 minutes (inclusive).
        bias: mean error (prediction - actual); positive means predictions run late.
        too_small: set on a slice with fewer rows than the evaluation's ``min_rows``; its
            numbers are reported but too noisy to judge.
    """

    n: int
    mae: float
    rmse: float
    p90_abs_error: float
    within_5_min: float
    bias: float
    too_small: bool = False


@dataclass(frozen=True)
class Evaluation:
    """Overall and per-slice metrics of one model version on one evaluation set.

    Attributes:
        model: model name, e.g. ``eta_mlp``.
        version: the registry's version id, or None for an unregistered model.
        overall: metrics over every order.
        slices: slice name -> slice value -> metrics, e.g. ``slices["zone_id"]["Z007"]``.
        min_slice_rows: the row count below which a slice was flagged ``too_small``.
    """

    model: str
    version: str | None
    overall: Metrics
    slices: dict[str, dict[str, Metrics]] = field(default_factory=dict)
    min_slice_rows: int = DEFAULT_MIN_SLICE_ROWS

    @property
    def label(self) -> str:
        """``model`` or ``model@version``, for tables and messages."""
        return self.model if self.version is None else f"{self.model}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of built-in types, ready for ``json.dumps``."""
        return {
            "model": self.model,
            "version": self.version,
            "min_slice_rows": self.min_slice_rows,
            "overall": asdict(self.overall),
            "slices": {
                name: {value: asdict(m) for value, m in values.items()}
                for name, values in self.slices.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """Inverse of :meth:`to_dict` (e.g. the champion's evaluation read from the registry)."""
        return cls(
            model=str(data["model"]),
            version=None if data.get("version") is None else str(data["version"]),
            overall=Metrics(**data["overall"]),
            slices={
                name: {value: Metrics(**m) for value, m in values.items()}
                for name, values in data.get("slices", {}).items()
            },
            min_slice_rows=int(data.get("min_slice_rows", DEFAULT_MIN_SLICE_ROWS)),
        )


def compute_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> Metrics:
    """Score predictions against actual delivery minutes.

    Args:
        y_true: actual delivery minutes.
        y_pred: predicted delivery minutes, same length and order.

    Returns:
        The metrics; ``too_small`` is left False (only slices are flagged).

    Raises:
        ValueError: the arrays are empty, of different lengths, or hold NaN or inf.
    """
    true = _as_1d(y_true, "y_true")
    pred = _as_1d(y_pred, "y_pred")
    if len(true) != len(pred):
        raise ValueError(f"y_true has {len(true)} values but y_pred has {len(pred)}")
    if len(true) == 0:
        raise ValueError("no orders to evaluate: y_true and y_pred are empty")
    err = pred - true
    abs_err = np.abs(err)
    return Metrics(
        n=len(true),
        mae=float(abs_err.mean()),
        rmse=float(np.sqrt(np.mean(err**2))),
        p90_abs_error=float(np.quantile(abs_err, 0.9)),
        within_5_min=float(np.mean(abs_err <= WITHIN_MINUTES)),
        bias=float(err.mean()),
    )


def hour_band(hour: int) -> str:
    """The named part of the day an hour (0-23) falls in, e.g. ``13 -> "lunch"``."""
    for name, first, last in HOUR_BANDS:
        if first <= hour <= last:
            return name
    raise ValueError(f"hour must be an integer in 0..23, got {hour!r}")


def hour_bands(hours: ArrayLike) -> pd.Series[Any]:
    """Vectorised :func:`hour_band`, as an ordered categorical (night first, late last)."""
    h = np.asarray(hours, dtype=float).ravel()
    bad = ~np.isfinite(h) | (h < 0) | (h > 23) | (h != np.floor(h))
    if bad.any():
        raise ValueError(f"hours must be integers in 0..23, got e.g. {h[bad][:5].tolist()}")
    names = np.array([hour_band(i) for i in range(24)], dtype=object)
    order = [name for name, _, _ in HOUR_BANDS]
    return pd.Series(pd.Categorical(names[h.astype(int)], categories=order, ordered=True))


def _hour_band_slice(frame: pd.DataFrame) -> pd.Series[Any]:
    return hour_bands(_column(frame, "hour", "hour_band"))


# Slice name -> column or derivation; the evaluation frame comes from the feature store, where
# the weather feature is the zone's ``zone_weather``.
DEFAULT_SLICES: Mapping[str, SliceSpec] = {
    "zone_id": "zone_id",
    "hour_band": _hour_band_slice,
    "weather": "zone_weather",
}


def slice_metrics(
    frame: pd.DataFrame,
    y_pred: ArrayLike,
    slices: Mapping[str, SliceSpec] | None = None,
    *,
    y_true: ArrayLike | None = None,
    label: str = LABEL,
    min_rows: int = DEFAULT_MIN_SLICE_ROWS,
) -> dict[str, dict[str, Metrics]]:
    """Metrics per value of each slice.

    Args:
        frame: the evaluation frame, one row per order, in the order of ``y_pred``.
        y_pred: predicted delivery minutes.
        slices: slice name -> column name or function of ``frame``; :data:`DEFAULT_SLICES`
            (zone, hour band, weather) by default.
        y_true: actual minutes; ``frame[label]`` by default.
        label: the label column, used when ``y_true`` is None.
        min_rows: slice values with fewer rows are kept but flagged ``too_small``.

    Returns:
        Slice name -> slice value (as a string; ``"missing"`` for nulls) -> metrics.

    Raises:
        ValueError: lengths differ, or a slice's column is missing from ``frame``.
    """
    pred = _as_1d(y_pred, "y_pred")
    true = _as_1d(_column(frame, label, "y_true") if y_true is None else y_true, "y_true")
    if not len(frame) == len(pred) == len(true):
        raise ValueError(
            f"frame has {len(frame)} rows, y_pred {len(pred)} and y_true {len(true)}; "
            "they must be aligned row for row"
        )
    out: dict[str, dict[str, Metrics]] = {}
    for name, masks in _slice_masks(frame, slices):
        per_value: dict[str, Metrics] = {}
        for value, mask in masks:
            m = compute_metrics(true[mask], pred[mask])
            per_value[value] = dataclasses.replace(m, too_small=m.n < min_rows)
        out[name] = per_value
    return out


def _slice_masks(
    frame: pd.DataFrame, slices: Mapping[str, SliceSpec] | None
) -> Iterator[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Each slice's name with (value key, row mask) per value, in slice-value order."""
    for name, spec in (DEFAULT_SLICES if slices is None else slices).items():
        keys = _column(frame, spec, name) if isinstance(spec, str) else spec(frame)
        if len(keys) != len(frame):
            raise ValueError(f"slice {name!r} gave {len(keys)} keys for {len(frame)} rows")
        # sort=True keeps categorical order (hour bands) and sorts everything else.
        codes, uniques = pd.factorize(keys, sort=True, use_na_sentinel=False)
        yield name, [(_key(value), codes == code) for code, value in enumerate(uniques)]


def paired_slice_se(
    frame: pd.DataFrame,
    y_true: ArrayLike,
    ours: ArrayLike,
    theirs: ArrayLike,
    slices: Mapping[str, SliceSpec] | None = None,
) -> dict[str, dict[str, float]]:
    """Standard error of the MAE difference between two models on the same rows, per slice value.

    Both models predict the same orders, so the difference of their MAEs on a slice is the mean
    of the paired differences ``|ours - true| - |theirs - true|``; its standard error (sample
    standard deviation / sqrt(n)) says how much of a slice's regression is noise. Pairing
    cancels the orders' own difficulty, which makes the test far sharper than comparing two
    independent MAEs. Slice values with fewer than two rows get ``inf``.

    Returns:
        Slice name -> slice value -> standard error in minutes (keys as in :func:`slice_metrics`).
    """
    true = _as_1d(y_true, "y_true")
    diff = np.abs(_as_1d(ours, "ours") - true) - np.abs(_as_1d(theirs, "theirs") - true)
    if not len(frame) == len(diff):
        raise ValueError(f"frame has {len(frame)} rows, predictions {len(diff)}")
    out: dict[str, dict[str, float]] = {}
    for name, masks in _slice_masks(frame, slices):
        per_value: dict[str, float] = {}
        for value, mask in masks:
            d = diff[mask]
            per_value[value] = (
                float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
            )
        out[name] = per_value
    return out


def evaluate(
    model: str,
    version: str | None,
    frame: pd.DataFrame,
    y_pred: ArrayLike,
    slices: Mapping[str, SliceSpec] | None = None,
    *,
    y_true: ArrayLike | None = None,
    label: str = LABEL,
    min_rows: int = DEFAULT_MIN_SLICE_ROWS,
) -> Evaluation:
    """Overall and per-slice metrics of one model version; arguments as in :func:`slice_metrics`."""
    true = _as_1d(_column(frame, label, "y_true") if y_true is None else y_true, "y_true")
    return Evaluation(
        model=model,
        version=version,
        overall=compute_metrics(true, y_pred),
        slices=slice_metrics(frame, y_pred, slices, y_true=true, min_rows=min_rows),
        min_slice_rows=min_rows,
    )


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(arr).all():
        # A NaN prediction would silently turn every metric into NaN and pass no gate.
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} NaN or inf values")
    return arr


def _column(frame: pd.DataFrame, column: str, what: str) -> pd.Series[Any]:
    if column not in frame.columns:
        raise ValueError(
            f"{what} needs column {column!r}, which the evaluation frame lacks "
            f"(it has {sorted(map(str, frame.columns))})"
        )
    return frame[column].reset_index(drop=True)


def _key(value: Any) -> str:
    if not isinstance(value, str) and bool(pd.isna(value)):
        return MISSING
    return str(value)


# ---------------------------------------------------------------------------------------------
# HTML report


def write_report(
    path: Path | str,
    challenger: Evaluation,
    champion: Evaluation | None,
    y_true: ArrayLike,
    pred_challenger: ArrayLike,
    pred_champion: ArrayLike | None = None,
    verdict: GateVerdict | None = None,
    *,
    max_points: int = MAX_SCATTER_POINTS,
    seed: int = 0,
) -> Path:
    """Write a self-contained HTML report comparing a challenger with the champion.

    The page embeds plotly.js once, so it opens offline. Sections: metrics table, residual
    histogram, predicted vs actual (at most ``max_points`` points, one shared random subset),
    MAE by slice (one chart per slice), and the gate verdict.

    Args:
        path: the HTML file to write; its folder is created.
        challenger: the challenger's evaluation.
        champion: the champion's evaluation, or None for a first model.
        y_true: actual delivery minutes of the evaluation set.
        pred_challenger: the challenger's predictions, aligned with ``y_true``.
        pred_champion: the champion's predictions on the same rows, if available.
        verdict: the gate's verdict, if the gate was run.
        max_points: cap on the scatter's points.
        seed: seed of the scatter's subsample.

    Returns:
        The path written.
    """
    import jinja2
    from markupsafe import Markup

    true = _as_1d(y_true, "y_true")
    preds = {challenger.label: _as_1d(pred_challenger, "pred_challenger")}
    if pred_champion is not None:
        preds[champion.label if champion else "champion"] = _as_1d(pred_champion, "pred_champion")
    for name, p in preds.items():
        if len(p) != len(true):
            raise ValueError(f"predictions of {name} have {len(p)} values, y_true {len(true)}")

    figures = [
        ("residuals", "Residuals (predicted − actual)", _residual_figure(true, preds)),
        ("scatter", "Predicted vs actual", _scatter_figure(true, preds, max_points, seed)),
    ]
    for name in challenger.slices:
        title = f"MAE by {name}"
        figures.append((f"slice-{name}", title, _slice_figure(name, challenger, champion)))
    # The first figure carries plotly.js; the rest reuse it, so the bundle is embedded once.
    # Markup is safe here: plotly writes its data as JSON with "<" and "/" \u-escaped.
    rendered = [
        {
            "id": fig_id,
            "title": title,
            "html": Markup(  # noqa: S704
                fig.to_html(
                    full_html=False,
                    include_plotlyjs=i == 0,
                    div_id=f"fig-{fig_id}",
                    config={"displaylogo": False},
                )
            ),
        }
        for i, (fig_id, title, fig) in enumerate(figures)
    ]
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    page = env.from_string(_TEMPLATE).render(
        challenger=challenger,
        champion=champion,
        metric_rows=_metric_rows(challenger, champion),
        slice_rows=_slice_rows(challenger, champion),
        figures=rendered,
        verdict=verdict,
        n_scatter=min(len(true), max_points),
        n_rows=len(true),
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


_METRIC_LABELS: tuple[tuple[str, str, str, str], ...] = (
    # (field, label, value format, difference format); lower is better but for within_5_min.
    ("n", "Orders", "{:,.0f}", ""),
    ("mae", "MAE (min)", "{:.2f}", "{:+.2f}"),
    ("rmse", "RMSE (min)", "{:.2f}", "{:+.2f}"),
    ("p90_abs_error", "P90 abs error (min)", "{:.2f}", "{:+.2f}"),
    ("within_5_min", "Within ±5 min", "{:.1%}", "{:+.1%}"),
    ("bias", "Bias (min)", "{:+.2f}", "{:+.2f}"),
)


def _metric_rows(challenger: Evaluation, champion: Evaluation | None) -> list[list[str]]:
    rows = []
    for attr, label, fmt, delta in _METRIC_LABELS:
        mine = getattr(challenger.overall, attr)
        row = [label, fmt.format(mine)]
        if champion is not None:
            theirs = getattr(champion.overall, attr)
            row += [fmt.format(theirs), delta.format(mine - theirs)]
        rows.append(row)
    return rows


def _slice_rows(challenger: Evaluation, champion: Evaluation | None) -> list[dict[str, str]]:
    rows = []
    for name, values in challenger.slices.items():
        theirs = champion.slices.get(name, {}) if champion else {}
        for value, m in values.items():
            other = theirs.get(value)
            rows.append(
                {
                    "slice": f"{name}={value}",
                    "n": f"{m.n:,}",
                    "mae": f"{m.mae:.2f}",
                    "champion_mae": "" if other is None else f"{other.mae:.2f}",
                    "bias": f"{m.bias:+.2f}",
                    "within": f"{m.within_5_min:.1%}",
                    "note": "too small" if m.too_small or (other and other.too_small) else "",
                }
            )
    return rows


def _residual_figure(true: np.ndarray, preds: Mapping[str, np.ndarray]) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, p in preds.items():
        fig.add_trace(go.Histogram(x=p - true, name=name, opacity=0.6, nbinsx=80))
    fig.update_layout(
        barmode="overlay",
        xaxis_title="predicted − actual (minutes)",
        yaxis_title="orders",
        margin={"t": 30},
    )
    return fig


def _scatter_figure(
    true: np.ndarray, preds: Mapping[str, np.ndarray], max_points: int, seed: int
) -> go.Figure:
    import plotly.graph_objects as go

    idx = np.arange(len(true))
    if len(idx) > max_points:
        # One subset for every model, so their clouds cover the same orders.
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_points, replace=False))
    fig = go.Figure()
    for name, p in preds.items():
        fig.add_trace(
            go.Scatter(
                x=true[idx], y=p[idx], mode="markers", name=name, marker={"size": 4, "opacity": 0.5}
            )
        )
    lo = float(min(true[idx].min(), *(p[idx].min() for p in preds.values()))) if len(idx) else 0.0
    hi = float(max(true[idx].max(), *(p[idx].max() for p in preds.values()))) if len(idx) else 1.0
    fig.add_trace(
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="perfect", line={"dash": "dash"})
    )
    fig.update_layout(
        xaxis_title="actual minutes", yaxis_title="predicted minutes", margin={"t": 30}
    )
    return fig


def _slice_figure(name: str, challenger: Evaluation, champion: Evaluation | None) -> go.Figure:
    import plotly.graph_objects as go

    values = list(challenger.slices[name])
    fig = go.Figure()
    models = [(challenger.label, challenger.slices[name])]
    if champion is not None:
        models.append((champion.label, champion.slices.get(name, {})))
    for label, metrics in models:
        ms = [metrics.get(v) for v in values]
        fig.add_trace(
            go.Bar(
                x=values,
                y=[m.mae if m else None for m in ms],
                name=label,
                text=[f"n={m.n}" + (" (small)" if m.too_small else "") if m else "" for m in ms],
                # Faded bars: too few rows to read much into them.
                marker={"opacity": [0.35 if m and m.too_small else 1.0 for m in ms]},
            )
        )
    fig.update_layout(
        barmode="group", xaxis_title=name, yaxis_title="MAE (minutes)", margin={"t": 30}
    )
    fig.update_xaxes(type="category")
    return fig


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ETA evaluation: {{ challenger.label }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
 table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
 th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
 th:first-child, td:first-child { text-align: left; }
 .pass { color: #1a7f37; } .fail { color: #cf222e; font-weight: 600; }
 .small { color: #888; }
 section { margin-bottom: 2rem; }
</style>
</head>
<body>
<h1>ETA evaluation: {{ challenger.label }}</h1>
<p>{{ "{:,}".format(n_rows) }} orders.
{% if champion %}Champion: {{ champion.label }}.{% else %}No champion: first model.{% endif %}</p>

<section id="verdict">
<h2>Gate verdict</h2>
{% if verdict %}
<p class="{{ 'pass' if verdict.passed else 'fail' }}">
{{ "PASSED" if verdict.passed else "REJECTED" }}</p>
<ul>
{% for reason in verdict.reasons %}
<li class="{{ 'fail' if reason.startswith('FAIL') else 'pass' }}">{{ reason }}</li>
{% endfor %}
</ul>
{% else %}
<p>The gate was not run for this report.</p>
{% endif %}
</section>

<section id="metrics">
<h2>Metrics</h2>
<table>
<tr><th>Metric</th><th>{{ challenger.label }}</th>
{% if champion %}<th>{{ champion.label }}</th><th>Δ</th>{% endif %}</tr>
{% for row in metric_rows %}
<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</table>
</section>

{% for fig in figures %}
<section id="{{ fig.id }}">
<h2>{{ fig.title }}</h2>
{% if fig.id == "scatter" %}<p>{{ "{:,}".format(n_scatter) }} orders shown.</p>{% endif %}
{{ fig.html }}
</section>
{% endfor %}

<section id="slice-table">
<h2>Slices</h2>
<p>Slices under {{ challenger.min_slice_rows }} orders are marked "too small".</p>
<table>
<tr><th>Slice</th><th>Orders</th><th>MAE</th>{% if champion %}<th>Champion MAE</th>{% endif %}
<th>Bias</th><th>Within ±5 min</th><th></th></tr>
{% for r in slice_rows %}
<tr class="{{ 'small' if r.note else '' }}"><td>{{ r.slice }}</td><td>{{ r.n }}</td>
<td>{{ r.mae }}</td>{% if champion %}<td>{{ r.champion_mae }}</td>{% endif %}
<td>{{ r.bias }}</td><td>{{ r.within }}</td><td>{{ r.note }}</td></tr>
{% endfor %}
</table>
</section>
</body>
</html>
"""
