"""Every registered encoder: interface, gradients, Impala details, timm weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vptr.errors import ConfigError, DataError, UnknownNameError
from vptr.nets import ENCODERS, make_encoder
from vptr.nets.encoders import ImageEncoder, max_pool_same

# (name, in_channels = 3 x frame stack, image size, options) — tiny inputs, all entries
CASES = [
    ("impala", 3, 64, {}),
    ("impala_small", 6, 32, {}),
    ("impala_small", 9, (20, 28), {"channels_last": False}),
    ("timm:resnet18", 6, 32, {}),
]


def test_every_registry_entry_is_covered():
    assert {c[0] for c in CASES if not c[0].startswith("timm:")} == set(ENCODERS)


@pytest.mark.parametrize("name,channels,size,kw", CASES)
def test_forward_backward_finite_with_gradient_on_every_parameter(name, channels, size, kw):
    torch.manual_seed(0)
    enc = make_encoder(name, channels, size, **kw)
    assert isinstance(enc, ImageEncoder)
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randint(0, 256, (3, channels, h, w), dtype=torch.uint8)
    out = enc(x)
    assert out.shape == (3, enc.out_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.pow(2).mean().backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum().item() for p in enc.parameters()) > 0
    # uint8 input is divided by 255 by the encoder; float input is taken as [0, 1]
    enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc(x.float() / 255.0))


def test_impala_matches_release_architecture():
    enc = make_encoder("impala", 3, 64)
    assert enc.out_dim == 8 * 8 * 32  # three "SAME" 3x3/2 pools: 64 -> 32 -> 16 -> 8
    expected_params = 0
    cin = 3
    for cout in (16, 32, 32):  # conv, then 2 residual blocks of 2 convs, all 3x3 with bias
        expected_params += cin * cout * 9 + cout + 2 * 2 * (cout * cout * 9 + cout)
        cin = cout
    assert sum(p.numel() for p in enc.parameters()) == expected_params
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in enc.parameters() if p.ndim == 4)
    assert all((m.bias == 0).all() for m in enc.modules() if isinstance(m, torch.nn.Conv2d))
    assert make_encoder("impala", 3, 63).out_dim == 8 * 8 * 32  # 63 -> 32 -> 16 -> 8
    assert make_encoder("impala_small", 3, 64).out_dim == 8 * 8 * 16


def test_impala_residual_block_and_final_relu():
    enc = make_encoder("impala_small", 3, 8, channels_last=False)
    block = enc.stacks[0].blocks[0]
    x = torch.randn(2, 8, 4, 4)
    by_hand = x + block.conv1(F.relu(block.conv0(F.relu(x))))
    torch.testing.assert_close(block(x), by_hand)
    out = enc(torch.rand(2, 3, 8, 8))
    assert (out >= 0).all()  # final ReLU before the flatten


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 3, 63, 64), (1, 2, 7, 10), (1, 1, 3, 3),
                                   (1, 1, 2, 2), (1, 1, 5, 4)])
def test_max_pool_same_equals_explicit_same_padding(shape):
    x = torch.randn(shape)
    h, w = shape[-2:]

    def pads(n):  # XLA "SAME": ceil(n/2) outputs, the odd pixel of padding at the end
        total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
        return total // 2, total - total // 2

    (top, bottom), (left, right) = pads(h), pads(w)
    ref = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, 2)
    assert torch.equal(max_pool_same(x), ref)


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    a = make_encoder("impala_small", 6, 32, channels_last=True)
    b = make_encoder("impala_small", 6, 32, channels_last=False)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 256, (4, 6, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


def test_bad_names_options_and_inputs():
    with pytest.raises(UnknownNameError, match="impala, impala_small, timm:<name>"):
        make_encoder("impla", 3, 64)
    with pytest.raises(ConfigError, match="widht"):
        make_encoder("impala", 3, 64, widht=2)
    with pytest.raises(UnknownNameError, match="resnet18"):
        make_encoder("timm:resnet_18", 3, 32)
    enc = make_encoder("impala_small", 6, 16)
    with pytest.raises(DataError, match=r"\(B, 6, H, W\)"):
        enc(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(DataError, match="int64"):
        enc(torch.zeros(2, 6, 16, 16, dtype=torch.int64))


def test_timm_local_weights_are_loaded_and_stem_adapted_to_stacked_frames(tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.models import adapt_input_conv

    torch.manual_seed(0)
    src = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=3)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, tmp_path / "r18.safetensors")
    torch.save({"state_dict": state}, tmp_path / "r18.pth")
    for fname in ("r18.safetensors", "r18.pth"):
        enc = make_encoder("timm:resnet18", 6, 32, weights=tmp_path / fname)
        own = enc.model.state_dict()
        torch.testing.assert_close(own["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
        torch.testing.assert_close(own["conv1.weight"], adapt_input_conv(6, state["conv1.weight"]))
        assert enc.out_dim == 512
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"bad\.pth"):
        make_encoder("timm:resnet18", 3, 32, weights=tmp_path / "bad.pth")
    with pytest.raises(DataError, match="not found"):
        make_encoder("timm:resnet18", 3, 32, weights=tmp_path / "missing.safetensors")
    other = timm.create_model("resnet34", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
              tmp_path / "r34.safetensors")
    with pytest.raises(DataError, match="do not fit"):  # extra blocks
        make_encoder("timm:resnet18", 3, 32, weights=tmp_path / "r34.safetensors")
    narrow = {k: v[..., :1].contiguous() if v.ndim == 4 else v for k, v in state.items()}
    save_file(narrow, tmp_path / "narrow.safetensors")
    with pytest.raises(DataError, match="do not fit"):  # same keys, wrong shapes
        make_encoder("timm:resnet18", 3, 32, weights=tmp_path / "narrow.safetensors")


def test_a_head_encoder_is_rebuilt_from_its_name_alone(tmp_path):
    from vptr.nets.encoders import HeadEncoder, HeadSpec, head_encoder_name
    from vptr.nets.weights import export_encoder, load_encoder

    spec = HeadSpec((32, 16), activate_final=True, layer_norm=True, sphere=True)
    name = head_encoder_name("impala_small", spec)
    assert name == "impala_small+head:32-16:final:ln:sphere"
    torch.manual_seed(0)
    enc = make_encoder(name, 6, 32)
    assert isinstance(enc, HeadEncoder) and enc.out_dim == 16 and enc.spec == spec
    x = torch.randint(0, 256, (3, 6, 32, 32), dtype=torch.uint8)
    y = enc(x)
    assert y.shape == (3, 16)
    assert torch.allclose(y.norm(dim=-1), torch.full((3,), 4.0), atol=1e-5)  # sqrt(16) sphere
    export_encoder(tmp_path / "enc", enc, name, frame_stack=2, image_size=32)
    back, meta = load_encoder(tmp_path / "enc")
    assert meta["encoder"] == name and torch.allclose(back(x), y, atol=1e-6)
    plain = make_encoder("impala_small+head:8", 3, 32)
    assert not plain.spec.sphere and plain.out_dim == 8
    for bad, msg in (("impala_small+head:", "widths"), ("impala_small+head:8-x", "widths"),
                     ("impala_small+head:8:wide", "flag"), ("nope+head:8", "nope")):
        with pytest.raises(ConfigError, match=msg):
            make_encoder(bad, 3, 32)
