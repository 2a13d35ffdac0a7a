"""pytest plugin: a failing test's report carries the logs of the fixtures it used.

A fixture module registers, per fixture name, a function from the fixture's value to
report sections ``(title, text)``: ``@on_failure("cluster")``. When a test's setup, call
or teardown fails, every registered fixture the test used adds its sections (shown
under the failure), so the cause is in the report without rerunning anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

Sections = Callable[[object], Iterable[tuple[str, str]]]
_SOURCES: dict[str, Sections] = {}


def on_failure(fixture: str) -> Callable[[Sections], Sections]:
    """Register ``sections(value)`` for the fixture named ``fixture``."""
    def register(sections: Sections) -> Sections:
        _SOURCES[fixture] = sections
        return sections
    return register


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if report.failed:
        used = getattr(item, "funcargs", {})
        for fixture, sections in _SOURCES.items():
            if fixture in used:
                report.sections.extend(sections(used[fixture]))
