"""A finished command ends without the interpreter's teardown, and loses nothing by it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_exit_handlers_run_output_is_flushed_and_the_status_kept(tmp_path: Path) -> None:
    marker, log = tmp_path / "atexit", tmp_path / "crmops.log"
    proc = _run(f"""
        import atexit, logging, sys, tempfile
        from crmops.cli.leave import leave
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        handler = logging.FileHandler({str(log)!r})
        logging.getLogger("t").addHandler(handler)
        logging.getLogger("t").warning("written before the end")
        left = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})  # never cleaned up by the code
        sys.stdout.write("buffered, no newline")
        leave(3)
        print("not reached")
        """)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newline"
    assert marker.read_text() == "ran"
    assert "written before the end" in log.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atexit", "crmops.log"]  # its finalizer ran


def test_a_running_thread_is_waited_for(tmp_path: Path) -> None:
    done = tmp_path / "done"
    proc = _run(f"""
        import sys, threading, time
        from crmops.cli.leave import leave
        def work():
            time.sleep(0.5)
            open({str(done)!r}, "w").write("finished")
        threading.Thread(target=work).start()
        leave(0)
        print("returned")
        sys.exit(4)
        """)
    assert (proc.returncode, proc.stdout) == (4, "returned\n")
    assert done.read_text() == "finished"


def test_a_message_as_the_code_is_printed_with_status_1() -> None:
    proc = _run("""
        from crmops.cli.leave import leave
        leave("went wrong")
        """)
    assert (proc.returncode, proc.stderr) == (1, "went wrong\n")


def test_the_command_line_ends_this_way_with_its_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "crmops", "--config", str(tmp_path / "missing.yaml"), "--json",
                           "snapshots"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and '"ok": false' in proc.stdout and proc.stderr.startswith("crmops: error:")
