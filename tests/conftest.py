"""Suite-wide rule: a required component that is missing fails the run. Only parts that need a
GPU may skip, and their reason must start with ``GPU-only:``; any other skip is turned into a
failure. The terminal summary ends with one line saying what was skipped and why."""
from __future__ import annotations

import pytest

GPU_ONLY = "GPU-only:"


def _reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and not _reason(report).startswith(GPU_ONLY):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: a required component is missing (only GPU-only parts may skip): "
                           f"{_reason(report)}")


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = sorted({_reason(r) for r in skipped})
    line = (f"skipped {len(skipped)} GPU-only test(s): " + "; ".join(reasons)) if skipped else \
        "skipped 0 tests: every required component is present"
    terminalreporter.write_line(line)
