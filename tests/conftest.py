"""Shared hooks of the whole suite (fixtures live in helpers/fixtures.py, which every folder
but tests/unit loads through its own conftest.py: unit tests use no fixture but pytest's).

- In CI (``CI=true``) nothing may be skipped: a skip is turned into a failure, because a
  skipped test there means a missing install step that would otherwise hide.
- A failing test that used a proxy process gets the tail of that proxy's stderr.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from helpers.ci import in_ci

# Lines of proxy stderr attached to a failing test's report.
_REPORT_LOG_LINES = 80


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, None, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"
    if report.failed:
        from helpers.proxy import ProxyProcess

        funcargs = getattr(item, "funcargs", {})
        for name, value in funcargs.items():
            if isinstance(value, ProxyProcess):
                tail = "\n".join(value.logs()[-_REPORT_LOG_LINES:])
                report.sections.append(
                    (f"proxy stderr ({name}, last {_REPORT_LOG_LINES} lines)", tail)
                )
