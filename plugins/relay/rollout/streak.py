"""How many consecutive ticks of a step each rollback check has failed, as the record keeps it.

Flagger rolls a canary back after ``threshold`` failed checks, not on the first noisy one: a
step re-tests errors, P99, throughput and quality every tick, so at ``error_alpha`` 0.01 one
chance burst among dozens of ticks is expected. The count lives in the step's hold verdict
(:class:`relay.rollout.record.StepVerdictRecord`), so it survives a crash and a JSON round
trip; a tick counts only when its observation differs from the one last counted, so ticking
the same record and observation twice never counts twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field


class FailureStreak(BaseModel):
    """The rollback checks failing at a step's latest judged tick, and for how many in a row.

    Attributes:
        failures: per failing check (a :class:`relay.rollout.rules.Check` value), the number
            of consecutive counted ticks it failed on; a passing tick drops it.
        evidence: the size of the observation last counted (both versions' requests plus
            their labelled predictions); an observation of the same size is not new.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    failures: dict[str, int] = Field(default_factory=dict)
    evidence: int = Field(0, ge=0)

    @property
    def worst(self) -> int:
        """The longest run of any failing check (0 when none fails)."""
        return max(self.failures.values(), default=0)


def extend(previous: FailureStreak | None, failing: Iterable[str], evidence: int) -> FailureStreak:
    """The streak after a tick whose failing rollback checks are ``failing``.

    Args:
        previous: the step's streak as recorded (None: the step has none yet).
        failing: the rollback checks that failed at this tick.
        evidence: the size of this tick's observation (see :attr:`FailureStreak.evidence`).

    Returns:
        Each failing check's run, one longer than recorded when the observation is new, the
        recorded run (at least 1) when it is the one already counted; passing checks drop out.
    """
    before = previous.failures if previous is not None else {}
    new = previous is None or evidence != previous.evidence
    failures = {
        check: before.get(check, 0) + 1 if new else max(before.get(check, 0), 1)
        for check in sorted(failing)
    }
    return FailureStreak(failures=failures, evidence=evidence)
