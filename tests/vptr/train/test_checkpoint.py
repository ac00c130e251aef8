"""Checkpoint weights: round trip and a clear error when the model options changed."""

from __future__ import annotations

import pytest
import torch

from vptr.errors import DataError
from vptr.train import checkpoint


def test_weights_round_trip_and_shape_mismatch_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    checkpoint.save_weights(path, {"nets": net})
    same = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    checkpoint.load_modules(path, {"nets": same})
    for a, b in zip(net.parameters(), same.parameters()):
        assert torch.equal(a, b)
    wider = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3))  # other options
    with pytest.raises(DataError, match=r"model\.safetensors.*size mismatch for 1\.weight"):
        checkpoint.load_modules(path, {"nets": wider})
