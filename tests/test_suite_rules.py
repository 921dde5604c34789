"""The suite's skip rule (tests/conftest.py): a missing required component fails; only GPU-only
parts skip, and the summary says what was skipped and why."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def test_only_gpu_only_tests_may_skip(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_needs_open3d():\n    pytest.skip('open3d missing')\n"
        "def test_needs_gpu():\n    pytest.skip('GPU-only: no CUDA device')\n"
        "def test_fine():\n    pass\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = res.stdout
    assert res.returncode == 1, out
    assert "a required component is missing" in out and "open3d missing" in out
    assert "1 failed, 1 passed, 1 skipped" in out
    assert "skipped 1 GPU-only test(s): GPU-only: no CUDA device" in out


CLOCKS = {"time", "perf_counter", "perf_counter_ns", "process_time", "thread_time", "time_ns", "now", "utcnow",
          "today", "timeit"}


def _clock_rule_violations(path: Path) -> list[str]:
    """Where a test reads a clock other than a polling deadline, or sleeps outside a loop."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def inside(node, kinds) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, kinds):
                return True
        return False

    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, where = node.func.attr, f"{path.name}:{node.lineno}"
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        if name in CLOCKS and owner in ("time", "datetime", "timeit"):
            bad.append(f"{where}: reads a clock ({owner}.{name}); only time.monotonic deadlines")
        elif name == "monotonic" and inside(node, ast.Assert):
            bad.append(f"{where}: a clock in an assertion")
        elif name == "sleep" and not inside(node, (ast.While, ast.For)):
            bad.append(f"{where}: sleeps outside a polling loop (wait for the condition instead)")
    return bad


def test_no_assertion_depends_on_elapsed_time():
    """Every assertion holds however slow the machine is: tests never measure time (no time.time,
    perf_counter, datetime.now) and never sleep-then-check; a wait polls its condition, with a
    time.monotonic deadline at most. The same check by hand:
    grep -rnE 'time\\.(time|perf_counter|process_time)\\(|datetime\\.(now|utcnow)|timeit' tests/"""
    here = Path(__file__).parent
    files = sorted(here.glob("test_*.py")) + sorted(here.glob("*/*.py")) + [here / "conftest.py", here / "builders.py"]
    bad = [v for f in files for v in _clock_rule_violations(f)]
    assert not bad, "\n".join(bad)
