"""Fixtures of the data-pipeline tests (helpers live in vptr_data_synth.py)."""

from __future__ import annotations

import pytest

from vptr.data.config import VideoSourceConfig


@pytest.fixture
def cfg(tmp_path) -> VideoSourceConfig:
    """Small frames, in-process decoding, no progress bar, cache inside tmp_path."""
    return VideoSourceConfig(image_size=16, decode_workers=1, progress=False,
                             cache_dir=str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Nothing in these tests may reach the network (LeRobot would ask the hub otherwise).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
