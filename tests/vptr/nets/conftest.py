"""Shared fixtures for the network tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here runs on one intra-op thread (see tests/conftest.py)."""
    yield
