"""A component a test needs is missing: skip with the command that provides it, fail under CI=true."""

from __future__ import annotations

import os

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(message: str) -> None:
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
