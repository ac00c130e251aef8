"""Shared pretraining helpers: frame deduplication, small maths."""

from __future__ import annotations

import math

import pytest
import torch

from vptr.errors import DataError
from vptr.nets import make_encoder
from vptr.pretrain.common import (
    INDEX_KEYS,
    encode_unique,
    expectile_weight,
    project_sphere,
)

KEYS = ("obs", "next_obs", "goal", "intent")


@pytest.fixture
def image_batch(make_batch):
    g = torch.Generator().manual_seed(7)
    frames = torch.randint(0, 256, (30, 3, 16, 16), dtype=torch.uint8, generator=g)
    return make_batch({"obs_index": [0, 5, 9, 20], "next_obs_index": [1, 6, 9, 21],
                       "goal_index": [0, 8, 9, 29], "intent_index": [3, 8, 1, 29]}, frames)


def test_encode_unique_equals_separate_encoding_values_and_gradients(image_batch):
    torch.manual_seed(0)
    enc = make_encoder("impala_small", 3, 16).double()
    got = encode_unique(enc, image_batch, KEYS)
    ref = {k: enc(image_batch[k]) for k in KEYS}
    for k in KEYS:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-12)
    # gradients through the gather equal those of encoding every copy
    w = {k: torch.randn_like(ref[k]) for k in KEYS}
    g1 = torch.autograd.grad(sum((got[k] * w[k]).sum() for k in KEYS), list(enc.parameters()))
    g2 = torch.autograd.grad(sum((ref[k] * w[k]).sum() for k in KEYS), list(enc.parameters()))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_encode_unique_runs_one_forward_on_distinct_frames(image_batch, flat_encoder):
    enc = flat_encoder(3, 16, 16)
    encode_unique(enc, image_batch, KEYS)
    distinct = torch.cat([image_batch[INDEX_KEYS[k]] for k in KEYS]).unique().numel()
    assert enc.calls == [distinct] and distinct < 16
    enc.calls.clear()
    encode_unique(enc, image_batch, KEYS, dedup=False)
    assert enc.calls == [16]
    # without index keys the images are encoded as given, still in one forward
    enc.calls.clear()
    no_index = {k: v for k, v in image_batch.items() if not k.endswith("_index")}
    out = encode_unique(enc, no_index, KEYS)
    assert enc.calls == [16] and out["goal"].shape == (4, 3 * 16 * 16)
    with pytest.raises(DataError, match="future_obs"):
        encode_unique(enc, image_batch, ("obs", "future_obs"))


def test_encode_unique_uses_first_copy_of_an_augmented_frame(image_batch, flat_encoder):
    # sample 0 reached its goal (same index); if augmentation made the pixels differ,
    # the observation's pixels are used for both
    batch = dict(image_batch)
    batch["goal"] = batch["goal"].clone()
    batch["goal"][0] = 255 - batch["goal"][0]
    out = encode_unique(flat_encoder(3, 16, 16), batch, ("obs", "goal"))
    torch.testing.assert_close(out["goal"][0], out["obs"][0])


def test_expectile_weight_and_sphere_projection():
    adv = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    assert expectile_weight(adv, 0.9).tolist() == [pytest.approx(0.1), 0.9, 0.9]
    assert expectile_weight(adv, 0.9).dtype == torch.float64
    x = torch.randn(5, 9)
    p = project_sphere(x)
    torch.testing.assert_close(p.norm(dim=1), torch.full((5,), 3.0))
    torch.testing.assert_close(p / 3.0, x / x.norm(dim=1, keepdim=True))
    assert math.isclose(project_sphere(torch.tensor([[3.0, 4.0]]))[0, 0].item(),
                        math.sqrt(2) * 0.6, rel_tol=1e-6)
