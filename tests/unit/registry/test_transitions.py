"""The registry's pure parts: the lifecycle table, version bumps and version ids."""

import datetime as dt
from collections import deque

import pytest

from relay.registry import (
    TRANSITIONS,
    IllegalTransition,
    InvalidName,
    InvalidVersion,
    ModelState,
    SemVer,
    check_transition,
    is_legal,
    make_version_id,
    next_version,
    parse_version_id,
)
from relay.registry.states import (
    INITIAL_STATES,
    PROMOTABLE,
    entering_serving_state,
    leaving_serving_state,
)

S = ModelState

# The table, written out independently of the module, plus the three documented
# additions (Training → Failed, Deploying → Failed, Deprecated → Deploying).
EXPECTED_EDGES = {
    (S.CREATED, S.TRAINING),
    (S.CREATED, S.ARCHIVED),
    (S.TRAINING, S.TRAINED),
    (S.TRAINING, S.FAILED),
    (S.TRAINED, S.EVALUATING),
    (S.EVALUATING, S.VALIDATED),
    (S.EVALUATING, S.FAILED),
    (S.VALIDATED, S.DEPLOYING),
    (S.VALIDATED, S.ARCHIVED),
    (S.FAILED, S.ARCHIVED),
    (S.DEPLOYING, S.SERVING),
    (S.DEPLOYING, S.FAILED),
    (S.SERVING, S.DEGRADED),
    (S.SERVING, S.DEPRECATED),
    (S.DEGRADED, S.SERVING),
    (S.DEGRADED, S.DEPRECATED),
    (S.DEPRECATED, S.ARCHIVED),
    (S.DEPRECATED, S.DEPLOYING),
}
ALL_PAIRS = [(a, b) for a in ModelState for b in ModelState]


def test_table_is_exactly_the_documented_edges():
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == EXPECTED_EDGES
    assert set(TRANSITIONS) == set(ModelState)


@pytest.mark.parametrize(("source", "target"), sorted(EXPECTED_EDGES))
def test_every_legal_transition_is_accepted(source, target):
    assert check_transition(source, target) is target
    assert check_transition(source.value, target.value) is target  # plain strings work too
    assert is_legal(source, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.CREATED, S.SERVING),
        (S.CREATED, S.VALIDATED),
        (S.TRAINED, S.DEPLOYING),
        (S.EVALUATING, S.SERVING),
        (S.FAILED, S.DEPLOYING),
        (S.VALIDATED, S.SERVING),
        (S.SERVING, S.VALIDATED),
        (S.SERVING, S.ARCHIVED),
        (S.DEGRADED, S.ARCHIVED),
        (S.DEPRECATED, S.SERVING),
        (S.ARCHIVED, S.CREATED),
        (S.ARCHIVED, S.SERVING),
        (S.SERVING, S.SERVING),
    ],
)
def test_illegal_transitions_are_refused_with_the_legal_targets(source, target):
    with pytest.raises(IllegalTransition) as caught:
        check_transition(source, target)
    err = caught.value
    assert (err.from_state, err.to_state) == (source.value, target.value)
    assert err.legal == tuple(sorted(s.value for s in TRANSITIONS[source]))
    assert repr(source.value) in str(err) and repr(target.value) in str(err)
    for legal in err.legal:
        assert legal in str(err)


def test_every_pair_outside_the_table_is_refused():
    refused = 0
    for source, target in ALL_PAIRS:
        if (source, target) in EXPECTED_EDGES:
            continue
        with pytest.raises(IllegalTransition):
            check_transition(source, target)
        refused += 1
    assert refused == len(ALL_PAIRS) - len(EXPECTED_EDGES)


def test_archived_is_final_and_says_so():
    with pytest.raises(IllegalTransition, match="final state"):
        check_transition(S.ARCHIVED, S.DEPLOYING)


def _reachable(start: ModelState) -> set[ModelState]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in TRANSITIONS[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_and_none_is_a_dead_end():
    assert _reachable(S.CREATED) == set(ModelState)
    for state in ModelState:
        assert S.ARCHIVED in _reachable(state), f"{state} can never be archived"


def test_stage_rules_follow_the_table():
    assert _reachable(S.CREATED) >= INITIAL_STATES
    assert entering_serving_state(S.VALIDATED) is S.DEPLOYING
    assert entering_serving_state(S.DEPRECATED) is S.DEPLOYING
    assert entering_serving_state(S.SERVING) is S.SERVING
    assert leaving_serving_state(S.SERVING) is S.DEPRECATED
    assert leaving_serving_state(S.DEGRADED) is S.DEPRECATED
    assert leaving_serving_state(S.DEPLOYING) is S.DEPLOYING
    for states in PROMOTABLE.values():
        assert S.ARCHIVED not in states and S.FAILED not in states


@pytest.mark.parametrize(
    ("latest", "kind", "expected"),
    [
        (None, "major", "1.0.0"),
        (None, "minor", "0.1.0"),
        (None, "patch", "0.0.1"),
        ("1.3.0", "patch", "1.3.1"),
        ("1.3.7", "minor", "1.4.0"),
        ("1.3.7", "major", "2.0.0"),
        ("1.9.0", "minor", "1.10.0"),
    ],
)
def test_versions_bump(latest, kind, expected):
    before = None if latest is None else SemVer.parse(latest)
    assert str(next_version(before, kind)) == expected


def test_semver_orders_numerically_and_refuses_junk():
    assert SemVer.parse("1.10.0") > SemVer.parse("1.9.3") > SemVer.parse("0.99.99")
    assert max(SemVer.parse(v) for v in ["1.2.0", "1.10.0", "1.9.9"]) == SemVer(1, 10, 0)
    for junk in ["1.2", "1.2.3.4", "v1.2.3", "01.2.3", "1.2.x", ""]:
        with pytest.raises(InvalidVersion):
            SemVer.parse(junk)
    with pytest.raises(InvalidVersion, match="bump kind"):
        SemVer(1, 0, 0).bump("huge")  # type: ignore[arg-type]


def test_version_id_format_and_round_trip():
    at = dt.datetime(2026, 11, 21, 14, 2, 59, tzinfo=dt.UTC)
    version_id = make_version_id("eta_mlp", SemVer(1, 3, 0), at)
    assert version_id == "eta_mlp_1.3.0_20261121_1402"
    parsed = parse_version_id(version_id)
    assert parsed.name == "eta_mlp"
    assert parsed.version == SemVer(1, 3, 0)
    assert parsed.created == dt.datetime(2026, 11, 21, 14, 2, tzinfo=dt.UTC)


def test_version_id_is_in_utc():
    paris = dt.timezone(dt.timedelta(hours=1))
    at = dt.datetime(2026, 11, 21, 15, 2, tzinfo=paris)
    assert make_version_id("eta_mlp", SemVer(0, 1, 0), at) == "eta_mlp_0.1.0_20261121_1402"


@pytest.mark.parametrize(
    "bad",
    ["eta_mlp", "eta_mlp_1.3_20261121_1402", "eta_mlp_1.3.0_2026112_1402", "_1.3.0_20261121_1402"],
)
def test_malformed_version_ids_are_refused(bad):
    with pytest.raises(InvalidVersion):
        parse_version_id(bad)


def test_impossible_timestamp_is_refused():
    with pytest.raises(InvalidVersion, match="impossible timestamp"):
        parse_version_id("eta_mlp_1.3.0_20261399_1402")


@pytest.mark.parametrize("bad", ["", "../etc", "eta/mlp", ".hidden", "eta mlp"])
def test_model_names_that_cannot_be_keys_are_refused(bad):
    with pytest.raises(InvalidName):
        make_version_id(bad, SemVer(1, 0, 0), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_errors_with_their_own_arguments_cross_a_process_boundary_as_themselves() -> None:
    # A Ray task (an inline deploy's load check) raises them in its caller through pickle.
    import pickle

    from relay.registry import ArtifactIntegrityError

    for err in (
        IllegalTransition("serving", "registered", ["degraded", "archived"]),
        ArtifactIntegrityError("eta_mlp_1.0.0_20261121_1402", "model.pt", "ab" * 32, "cd" * 32),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err) and vars(back) == vars(err)
