"""The suite's own schedule: known long tests go first, longest first, the rest keep file order."""

from __future__ import annotations

from types import SimpleNamespace

from tests.ordering import THRESHOLD, bare_id, longest_first


def test_long_tests_lead_longest_first_and_the_rest_keep_their_order() -> None:
    names = ["a::1", "a::2", "b::long", "c::1", "d::longer", "e::short-known"]
    items = [SimpleNamespace(nodeid=n) for n in names]
    known = {"b::long": THRESHOLD + 10, "d::longer": THRESHOLD + 50, "e::short-known": THRESHOLD - 1}
    order = [i.nodeid for i in longest_first(items, known)]  # type: ignore[arg-type]
    assert order == ["d::longer", "b::long", "a::1", "a::2", "c::1", "e::short-known"]


def test_a_grouped_test_is_known_by_its_id_without_the_group() -> None:
    """On a worker, --dist loadgroup has appended "@group" to the ids of tests in an xdist_group."""
    assert bare_id("tests/a.py::test_x[p@1]@shared") == "tests/a.py::test_x[p@1]"
    assert bare_id("tests/a.py::test_x") == "tests/a.py::test_x"
    assert bare_id("tests/a.py::test_x[p@1]") == "tests/a.py::test_x[p@1]"
    items = [SimpleNamespace(nodeid=n) for n in ["a::1", "b::long@grp"]]
    order = [i.nodeid for i in longest_first(items, {"b::long": THRESHOLD + 1})]  # type: ignore[arg-type]
    assert order == ["b::long@grp", "a::1"]
