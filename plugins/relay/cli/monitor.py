"""``relay monitor …``: judge one monitoring window by hand, and read the last verdicts.

``run`` does what the hourly ``eta_monitoring`` DAG's first task does
(:func:`relay.flows.eta_monitoring.run_monitoring`): report, verdict, recorded in the monitoring
history. It does not act on the verdict: retrains and rollbacks stay with the DAG, which knows
what else is running. ``status`` reads the history from the registry's store.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from relay.cli.common import JsonOpt, fail, out, run

app = typer.Typer(
    help="Monitoring: drift and live quality of production, one window at a time.",
    no_args_is_help=True,
)


def _parse_end(value: str | None) -> dt.datetime:
    from relay.clock import as_utc, utcnow

    if value is None:
        return utcnow()
    try:
        return as_utc(dt.datetime.fromisoformat(value))
    except ValueError as exc:
        raise typer.BadParameter(
            "an ISO 8601 time, e.g. 2026-11-21T14:00 or 2026-11-21T14:00:00+00:00",
            param_hint="--end",
        ) from exc


def _print_verdict(verdict: Mapping[str, Any], *, passed: bool = True) -> None:
    version = verdict.get("production_version") or "production"
    key = verdict.get("run_key") or "(ad hoc)"
    out.print(f"{key} {version}: {str(verdict.get('action', '?')).upper()}", markup=False)
    reasons = [r for r in verdict.get("reasons", []) if passed or not r.startswith("PASS")]
    for reason in reasons or ["every check passed"]:
        out.print(f"  {reason}", markup=False)
    reports = (("drift report", "report_path"), ("quality report", "quality_report_path"))
    for label, path_key in reports:
        if verdict.get(path_key):
            out.print(f"  {label}: {verdict[path_key]}", markup=False)


@app.command("run")
def monitor_run(
    end: Annotated[
        str | None,
        typer.Option(help="The window's end (ISO 8601; naive means UTC); default now"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Judge the window before END: drift and quality reports, the verdict and its reasons.

    The verdict is recorded (``relay monitor status``); nothing is triggered or rolled back.
    """
    from relay.flows.eta_monitoring import run_monitoring

    at = _parse_end(end)
    verdict = run(lambda: run_monitoring(at))
    if as_json:
        out.print_json(json.dumps(verdict, default=str))
        return
    _print_verdict(verdict)


@app.command("status")
def monitor_status(
    last: Annotated[int, typer.Option(min=1, help="How many verdicts, newest first")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """The last verdicts (failed and skipped checks, reports) and the rejected retrains.

    A retrain the gate rejected is not asked for again until a newer day of orders lands.
    """
    from relay.monitor.history import MonitoringHistory

    history = MonitoringHistory()
    verdicts = run(lambda: history.verdicts(last))
    rejections = run(history.rejections)
    if as_json:
        doc = {
            "verdicts": verdicts,
            "rejections": [r.model_dump(mode="json") for r in rejections],
        }
        out.print_json(json.dumps(doc, default=str))
        return
    if not verdicts:
        raise fail("no monitoring verdict yet: `relay monitor run` or the eta_monitoring DAG")
    for verdict in verdicts:
        _print_verdict(verdict, passed=False)
    for r in rejections[-last:]:
        out.print(
            f"gate rejected {r.version or 'the model'} of {r.run_id} ({r.kind}, data up to "
            f"{r.data_day}) at {r.rejected_at:%Y-%m-%d %H:%M}: not retrained again until a "
            "newer day lands",
            markup=False,
        )
