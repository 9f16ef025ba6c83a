"""Skips that must not hide anything under ``CI=true``.

Locally a missing server or extra skips loudly (the reason is printed by ``-ra``); under ``CI=true``
the same test fails, so a CI run that lacks a server cannot pass by testing less. Use
:func:`skip_or_fail` instead of ``pytest.skip`` and :func:`require_module` instead of
``pytest.importorskip``. The two hooks below are the safety net for any other skip (a ``skip``
marker, ``skipif``, a plain ``pytest.skip``): tests/conftest.py and benches/conftest.py import them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Generator
from types import ModuleType
from typing import NoReturn

import pytest

#: CI sets CI=true (.ci/run does too).
IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail(message: str) -> NoReturn:
    """Skip with ``message``, or fail with it under ``CI=true``; works at module level too."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing requirement fails instead of skipping)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_module(name: str, reason: str) -> ModuleType:
    """``pytest.importorskip`` that fails under ``CI=true``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        problem = str(exc)
    skip_or_fail(f"{name} not importable ({problem}): {reason}")  # outside the except: no chained traceback


def _ci_failure(longrepr: object) -> str:
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return f"skipped under CI=true, which allows no skip: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = _ci_failure(report.longrepr)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = _ci_failure(report.longrepr)
    return report
