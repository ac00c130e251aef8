"""Weight files: round trip and a clear error when the model options changed."""

from __future__ import annotations

import pytest
import torch

from vptr.errors import DataError
from vptr.nets import weights


def test_weights_round_trip_and_shape_mismatch_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    weights.save_weights(path, {"nets": net})
    same = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    weights.load_modules(path, {"nets": same})
    for a, b in zip(net.parameters(), same.parameters()):
        assert torch.equal(a, b)
    wider = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3))  # other options
    with pytest.raises(DataError, match=r"model\.safetensors.*size mismatch for 1\.weight"):
        weights.load_modules(path, {"nets": wider})


def test_exported_encoder_loads_back_with_the_same_outputs(tmp_path):
    from vptr.nets import make_encoder

    torch.manual_seed(0)
    enc = make_encoder("impala_small", 6, 16)
    out = weights.export_encoder(tmp_path / "encoder", enc, "impala_small", frame_stack=2,
                                 image_size=16, objective="icvf", step=7)
    loaded, meta = weights.load_encoder(out)
    assert meta["frame_stack"] == 2 and meta["step"] == 7 and meta["out_dim"] == enc.out_dim
    x = torch.randint(0, 256, (3, 6, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(loaded(x), enc.eval()(x))


def test_broken_encoder_folders_are_named(tmp_path):
    from vptr.nets import make_encoder

    with pytest.raises(DataError, match="not an exported encoder"):
        weights.load_encoder(tmp_path)
    out = weights.export_encoder(tmp_path / "e", make_encoder("impala_small", 3, 16),
                                 "impala_small", frame_stack=1, image_size=16)
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match=r"model\.safetensors: not a readable safetensors"):
        weights.load_encoder(out)
    (out / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match="not a vptr-encoder/1 encoder config"):
        weights.load_encoder(out)
