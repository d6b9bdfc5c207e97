"""``operations.unstorable`` tests each value cheaply before its full check: it must still find every
problem the full check finds, and say it in the same words, as the plain loop it replaced did."""

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from conductor_contracts.states import JobState
from conductor_projector import tables as t
from conductor_projector.operations import (
    _BOUNDS,
    InsertJob,
    InsertRow,
    Operation,
    UpdateJob,
    UpdateNode,
    UpsertNode,
    _keyed,
    _problem,
    unstorable,
)


def reference(op: Operation) -> str | None:
    """The check as it was: every key and value of the operation through ``_problem``."""
    table = op.table if isinstance(op, InsertRow) else t.jobs if isinstance(op, InsertJob | UpdateJob) else t.nodes
    columns = _BOUNDS[table.name]
    for name, value in _keyed(op).items():
        if isinstance(value, str | int):
            bounds = columns.get(name)
            if bounds is not None and (problem := _problem(bounds, name, value)) is not None:
                return problem
    return None


_EDGES = [2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 0]
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("a\x00\ud800\udfff\u00e9\U0001f600/"), max_size=40),
    st.builds(lambda c, n: c * n, st.sampled_from("a\u00e9\U0001f600\x00"), st.integers(0, 1200)),
)
values = st.one_of(
    texts,
    st.integers(),
    st.sampled_from(_EDGES),
    st.booleans(),
    st.none(),
    st.sampled_from(list(JobState)),  # a str subclass
    st.just(datetime(2026, 1, 1, tzinfo=UTC)),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(texts, texts, max_size=2),
)


def _columns(table: Any) -> st.SearchStrategy[str]:
    return st.sampled_from([c.name for c in table.columns] + ["not_a_column"])


def _values(table: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(_columns(table), values, max_size=8)


operations = st.one_of(
    st.builds(InsertJob, _values(t.jobs)),
    st.builds(UpdateJob, st.one_of(st.integers(), st.sampled_from(_EDGES)), _values(t.jobs)),
    st.builds(UpsertNode, _values(t.nodes)),
    st.builds(UpdateNode, texts, _values(t.nodes)),
    st.builds(InsertRow, st.just(t.users), _values(t.users)),
    st.builds(InsertRow, st.just(t.workflows), _values(t.workflows)),
)


@settings(max_examples=2000, deadline=None)
@given(operations)
def test_unstorable_finds_what_the_full_check_finds(op: Operation) -> None:
    assert unstorable(op) == reference(op)


def test_the_key_given_again_among_the_values_is_checked_as_sent() -> None:
    op = UpdateJob(3, {"pid": 1, "job_id": 2**63})
    assert unstorable(op) == reference(op) == "job_id 9223372036854775808 is out of range for jobs.job_id (int64)"
