"""The departure history behind CLONED_TAG (real SQLite file)."""

from __future__ import annotations

from pathlib import Path

from edgegate.history import DepartureHistory

A, B, C = "3074257BF7194E4000001A85", "3074257BF7194E4000001A86", "3074257BF7194E4000001A87"


def test_goods_that_left_are_remembered_until_they_come_back_in(tmp_path: Path) -> None:
    history = DepartureHistory.open(tmp_path)
    history.leave([A, B], already=history.departed_among([A, B]))
    assert history.departed_among([A, B, C]) == {A, B}
    history.come_back([A, C])
    assert history.departed_among([A, B, C]) == {B}
    history.close()
    assert DepartureHistory.open(tmp_path).departed_among([A, B]) == {B}


def test_the_history_is_bounded_keeping_the_newest(tmp_path: Path) -> None:
    history = DepartureHistory.open(tmp_path, max_rows=2)
    for epc in (A, B, C):
        history.leave([epc], already=history.departed_among([epc]))
    assert history.departed_among([A, B, C]) == {B, C}


def test_the_bound_counts_goods_leaving_again_once(tmp_path: Path) -> None:
    history = DepartureHistory.open(tmp_path, max_rows=2)
    history.leave([A, B], already=frozenset())
    # A leaves again (its tag was re-used after it came back unseen): still two rows.
    history.leave([A], already=history.departed_among([A]))
    assert history.departed_among([A, B, C]) == {A, B}
    history.close()
    reopened = DepartureHistory.open(tmp_path, max_rows=2)
    reopened.leave([C], already=frozenset())
    assert reopened.departed_among([A, B, C]) == {A, C}


def test_lookups_work_past_the_sqlite_parameter_chunk(tmp_path: Path) -> None:
    history = DepartureHistory.open(tmp_path)
    epcs = [f"{n:024X}" for n in range(1200)]
    history.leave(epcs[::2], already=frozenset())
    assert history.departed_among(epcs) == frozenset(epcs[::2])


def test_goods_coming_in_that_never_left_change_nothing_and_the_bound_still_holds(
    tmp_path: Path,
) -> None:
    history = DepartureHistory.open(tmp_path, max_rows=2)
    history.leave([A, B], already=frozenset())
    history.come_back([A, C])  # C never left: no harm
    assert history.departed_among([A, B, C]) == {B}
    history.leave([C], already=frozenset())
    history.leave([A], already=frozenset())
    assert history.departed_among([A, B, C]) == {C, A}
