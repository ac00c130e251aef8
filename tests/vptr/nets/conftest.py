"""Shared fixtures for the network tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Run on one intra-op thread: on the shared 2-core CI/dev machines, two OpenMP threads
    competing with other processes made these small steps 30-60x slower (spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
