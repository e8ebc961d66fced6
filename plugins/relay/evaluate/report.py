"""The evaluation report: a self-contained HTML page comparing a challenger with the champion.

:func:`write_report` renders the two :class:`~relay.evaluate.metrics.Evaluation` objects and the
gate's :class:`~relay.evaluate.gate.GateVerdict` (the report is where the numbers and the
verdict meet) as one page that opens offline: plotly.js is embedded once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from relay.evaluate.gate import GateVerdict
from relay.evaluate.metrics import Evaluation, as_1d
from relay.verdict import FAIL

if TYPE_CHECKING:  # pragma: no cover, typing only
    import plotly.graph_objects as go

    from relay.model.quantise import OptimiseOutcome

MAX_SCATTER_POINTS = 5_000
TOP_FEATURES = 3
"""Features named in the importance section's text, per model."""


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
    optimised: OptimiseOutcome | None = None,
    variant: str = "float",
    importance: Mapping[str, float] | None = None,
    champion_importance: Mapping[str, float] | None = None,
) -> Path:
    """Write a self-contained HTML report comparing a challenger with the champion.

    The page embeds plotly.js once, so it opens offline. Sections: metrics table, residual
    histogram, predicted vs actual (at most ``max_points`` points, one shared random subset),
    MAE by slice (one chart per slice), the gate verdict, when the optimise stage ran its INT8
    verdict and, when known, the challenger's feature importance (beside the champion's).

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
        optimised: the optimise stage's verdict on the challenger's INT8 model, if it ran.
        variant: which of the challenger's weights were evaluated: ``float`` or ``int8``.
        importance: the challenger's feature importance (shares by input,
            ``TrainingInfo.feature_importance``); empty or None: no importance section.
        champion_importance: the champion's, drawn beside it when known.

    Returns:
        The path written.
    """
    import jinja2
    from markupsafe import Markup

    true = as_1d(y_true, "y_true")
    preds = {challenger.label: as_1d(pred_challenger, "pred_challenger")}
    if pred_champion is not None:
        preds[champion.label if champion else "champion"] = as_1d(pred_champion, "pred_champion")
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
    ranked = _importance_models(challenger, champion, importance, champion_importance)
    if ranked:
        figures.append(("importance", "Feature importance", _importance_figure(ranked)))
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
        optimised=optimised,
        variant=variant,
        fail=FAIL,
        n_scatter=min(len(true), max_points),
        n_rows=len(true),
        top_features=[(label, _top(shares)) for label, shares in ranked],
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


def _importance_models(
    challenger: Evaluation,
    champion: Evaluation | None,
    importance: Mapping[str, float] | None,
    champion_importance: Mapping[str, float] | None,
) -> list[tuple[str, dict[str, float]]]:
    """(label, shares) of each model whose importance is known, the challenger first; none
    without the challenger's (a version trained before importance was measured)."""
    if not importance:
        return []
    models = [(challenger.label, dict(importance))]
    if champion_importance:
        models.append((champion.label if champion else "champion", dict(champion_importance)))
    return models


def _top(shares: Mapping[str, float], n: int = TOP_FEATURES) -> str:
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{name} {share:.0%}" for name, share in ranked)


def _importance_figure(models: list[tuple[str, dict[str, float]]]) -> go.Figure:
    import plotly.graph_objects as go

    ours = models[0][1]
    names = sorted({n for _, shares in models for n in shares})
    # Ascending, as plotly draws a horizontal bar chart bottom-up: the largest share on top.
    names.sort(key=lambda n: (ours.get(n, 0.0), max(s.get(n, 0.0) for _, s in models)))
    fig = go.Figure()
    for label, shares in models:
        fig.add_trace(
            go.Bar(
                x=[shares.get(n) for n in names],
                y=names,
                orientation="h",
                name=label,
                text=[f"{shares[n]:.1%}" if n in shares else "" for n in names],
            )
        )
    fig.update_layout(
        barmode="group",
        xaxis_title="share of the holdout MAE increase when shuffled",
        xaxis_tickformat=".0%",
        height=max(300, 22 * len(names) * len(models) + 120),
        margin={"t": 30},
    )
    fig.update_yaxes(type="category")
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
<li class="{{ 'fail' if reason.startswith(fail) else 'pass' }}">{{ reason }}</li>
{% endfor %}
</ul>
{% else %}
<p>The gate was not run for this report.</p>
{% endif %}
</section>

{% if optimised or variant != "float" %}
<section id="optimised">
<h2>Optimised model</h2>
<p>Evaluated with its {{ variant }} weights (those serving loads).</p>
{% if optimised %}
<p class="{{ 'pass' if optimised.accepted else 'fail' }}">{{ optimised.reason }}</p>
<p class="small">{{ optimised.method }}; {{ "{:,}".format(optimised.holdout_rows) }} holdout
orders, a {{ optimised.timing_rows }}-row batch timed on {{ optimised.measured_on }}.</p>
{% endif %}
</section>
{% endif %}

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
{% if fig.id == "importance" %}
<p>Permutation importance on the training run's holdout: each input's share of the MAE
increase when its column is shuffled.</p>
<ul>
{% for label, top in top_features %}
<li>Top features of {{ label }}: {{ top }}</li>
{% endfor %}
</ul>
{% endif %}
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
