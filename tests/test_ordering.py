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


def test_the_tests_of_an_xdist_group_run_on_one_worker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--dist loadgroup` keeps a group on one worker: the sandbox-cleanup group's members must never run side
    by side, and a module fixture's users share one build. pytest 9 with pytest-xdist 3.8 silently grouped
    nothing (pyproject.toml keeps pytest below 9)."""
    import subprocess
    import sys

    out = tmp_path / "ran"
    out.mkdir()
    body = ["import os, time, pytest", "G = pytest.mark.xdist_group('g')"]
    for i in range(6):
        body += ["@G", f"def test_grouped_{i}():", "    time.sleep(0.1)",
                 f"    open({str(out)!r} + '/g{i}', 'w').write(os.environ['PYTEST_XDIST_WORKER'])",
                 f"def test_free_{i}():", "    time.sleep(0.1)"]
    (tmp_path / "test_groups.py").write_text("\n".join(body) + "\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2",
                        "--dist", "loadgroup", "test_groups.py"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    workers = {p.read_text() for p in out.iterdir()}
    assert len(list(out.iterdir())) == 6 and len(workers) == 1, workers
