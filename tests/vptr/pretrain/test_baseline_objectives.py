"""Baselines: time-contrastive InfoNCE, VIP and no pretraining, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vptr.errors import ConfigError, DataError
from vptr.pretrain import none, tcn, vip


def _feat(batch, key):
    return batch[key].double().flatten(1).numpy() / 255.0


def _embed(nets, x: np.ndarray) -> np.ndarray:
    w = nets.head.weight.detach().double().numpy()
    b = nets.head.bias.detach().double().numpy()
    return x @ w.T + b


LEGACY = {"positive": "future", "same_video_negative": False}  # the pre-R3M TCN


def test_tcn_future_infonce_matches_hand_computation_with_masked_duplicates(
        frames, flat_encoder, make_batch):
    torch.manual_seed(0)
    cfg = tcn.TCNConfig(embed_dim=5, temperature=0.5, **LEGACY)
    nets = tcn.create(cfg, flat_encoder(3, 2, 2)).double()
    # samples 1 and 2 share their positive frame (13), and sample 3's positive (25) is
    # sample 2's anchor frame: both must be masked out of the negatives
    batch = make_batch({"obs_index": [3, 11, 25, 24], "future_index": [5, 13, 13, 25]}, frames)
    loss, metrics = tcn.loss_fn(nets, None, batch, cfg)
    a = _embed(nets, _feat(batch, "obs"))
    p = _embed(nets, _feat(batch, "future_obs"))
    fut, obs = batch["future_index"].tolist(), batch["obs_index"].tolist()
    total = 0.0
    for i in range(4):
        logits = []
        for j in range(4):
            if j != i and (fut[j] == fut[i] or fut[j] == obs[i]):
                continue  # the same frame as the positive or the anchor is no negative
            logits.append((j, -np.linalg.norm(a[i] - p[j]) / 0.5))
        pos = dict(logits)[i]
        total += -(pos - math.log(sum(math.exp(v) for _, v in logits)))
    assert loss.item() == pytest.approx(total / 4, rel=1e-9)
    # accuracy: the anchors whose positive beats every (unmasked) negative
    correct = 0
    for i in range(4):
        others = [-np.linalg.norm(a[i] - p[j]) for j in range(4)
                  if j != i and not (fut[j] == fut[i] or fut[j] == obs[i])]
        correct += int(all(-np.linalg.norm(a[i] - p[i]) > o for o in others))
    assert metrics["tcn/accuracy"].item() == pytest.approx(correct / 4)
    with torch.no_grad():
        v = tcn.value(nets, batch["obs"], batch["future_obs"])
    np.testing.assert_allclose(v.numpy(), -np.linalg.norm(a - p, axis=1), rtol=1e-9)


def test_tcn_cosine_similarity_and_validation(frames, flat_encoder, make_batch):
    cfg = tcn.TCNConfig(embed_dim=0, similarity="cosine", temperature=0.1, **LEGACY)
    nets = tcn.create(cfg, flat_encoder(3, 2, 2)).double()
    batch = make_batch({"obs_index": [0, 10, 20], "future_index": [1, 11, 21]}, frames)
    loss, _ = tcn.loss_fn(nets, None, batch, cfg)
    a, p = _feat(batch, "obs"), _feat(batch, "future_obs")
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1,
                                                                                keepdims=True)).T
    logits = cos / 0.1
    hand = np.mean([np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in range(3)])
    assert loss.item() == pytest.approx(hand, rel=1e-9)
    for bad in ({"temperature": 0.0}, {"embed_dim": -1}, {"batch_size": 1},
                {"similarity": "dot"}, {"positive": "next"}, {"positive_window": 0},
                {"positive": "future"}):  # the far negative needs the near positive
        with pytest.raises(ConfigError, match="tcn"):
            tcn.TCNConfig(**bad)
    assert (tcn.TCNConfig().positive, tcn.TCNConfig().same_video_negative) == ("near", True)


# trajectories of 10 frames (global index = 10 * trajectory + t)
NEAR_FAR = {
    "obs_index": [2, 5, 17, 29, 31],
    "near_index": [4, 6, 19, 29, 32],  # sample 3 is at its last frame: no positive
    "far_index": [8, 9, 12, 29, 32],  # sample 2's positive is the last frame: far before t
    "far_valid": [True, True, True, False, False],  # sample 4: as if its video were short
}


def _tcn_hand_loss(a, near, far, traj, near_ok, far_ok, same_video_negative, temperature):
    """Per valid anchor: -log softmax over its positive, its own far frame and every existing
    near / far frame of another video, with sim = -L2 / temperature."""
    losses, ordered, correct = [], [], []
    for i in range(len(a)):
        if not near_ok[i]:
            continue
        cands = [near[i]]
        if same_video_negative and far_ok[i]:
            cands.append(far[i])
        for j in range(len(a)):
            if traj[j] != traj[i] and near_ok[j]:  # placeholders of missing frames: unused
                cands.append(near[j])
                if same_video_negative and far_ok[j]:
                    cands.append(far[j])
        logits = np.array([-np.linalg.norm(a[i] - c) / temperature for c in cands])
        losses.append(np.log(np.exp(logits).sum()) - logits[0])
        correct.append(bool(np.all(logits[0] > logits[1:])))
        if far_ok[i]:
            ordered.append(np.linalg.norm(a[i] - near[i]) < np.linalg.norm(a[i] - far[i]))
    return float(np.mean(losses)), float(np.mean(ordered)), float(np.mean(correct))


@pytest.mark.parametrize("same_video_negative", [True, False])
def test_tcn_near_far_infonce_matches_hand_computation(frames, flat_encoder, make_batch,
                                                       same_video_negative):
    cfg = tcn.TCNConfig(embed_dim=0, temperature=0.7, same_video_negative=same_video_negative)
    enc = flat_encoder(3, 2, 2)
    nets = tcn.create(cfg, enc).double()
    batch = make_batch(NEAR_FAR, frames)
    assert batch["near_valid"].tolist() == [True, True, True, False, True]
    loss, metrics = tcn.loss_fn(nets, None, batch, cfg)
    feats = {k: _feat(batch, k) for k in ("obs", "near_obs", "far_obs")}
    hand, ordered, accuracy = _tcn_hand_loss(feats["obs"], feats["near_obs"], feats["far_obs"],
                                   batch["traj_index"].tolist(), batch["near_valid"].tolist(),
                                   batch["far_valid"].tolist(), same_video_negative, 0.7)
    assert loss.item() == pytest.approx(hand, rel=1e-9)
    assert metrics["tcn/valid_rows"] == pytest.approx(4 / 5)
    assert metrics["tcn/accuracy"].item() == pytest.approx(accuracy)
    if same_video_negative:
        assert metrics["tcn/ordered"].item() == pytest.approx(ordered)
    else:
        assert "tcn/ordered" not in metrics
    # one forward over the distinct frames (obs 29 == near 29 == far 29; 32 twice)
    distinct = len(set(NEAR_FAR["obs_index"]) | set(NEAR_FAR["near_index"])
                   | (set(NEAR_FAR["far_index"]) if same_video_negative else set()))
    assert enc.calls == [distinct]


class IndexEncoder(torch.nn.Module):
    """Embeds a frame by looking up its global index (stored in its first pixel)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.out_dim = table.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


def _index_batches(lengths: np.ndarray, n_batches: int, batch_size: int, window: int):
    from vptr.data.config import SamplerConfig
    from vptr.data.sampling import sample_index_batch

    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for step in range(n_batches):
        idx = sample_index_batch(np.random.default_rng(step), offsets, lengths,
                                 SamplerConfig(), batch_size, near_window=window)
        batch = {k: torch.from_numpy(np.asarray(v)) for k, v in idx.items() if k != "rows"}
        for key in ("obs", "near_obs", "far_obs", "future_obs"):
            batch[key] = batch[key.replace("_obs", "") + "_index"].reshape(-1, 1, 1, 1)
        yield batch


def _mean_tcn_loss(table: torch.Tensor, cfg: tcn.TCNConfig, lengths: np.ndarray) -> float:
    nets = tcn.EmbeddingNets(IndexEncoder(table), 0)
    return float(np.mean([tcn.loss_fn(nets, None, b, cfg)[0].item()
                          for b in _index_batches(lengths, 20, 32, cfg.positive_window)]))


def test_tcn_loss_prefers_embeddings_that_order_time():
    """Videos far apart, time along a line inside each video: lower loss than the same
    points shuffled within each video, and than appearance alone (one point per video) —
    which only the same-video negative can tell from ordered time."""
    lengths = np.full(8, 30)
    traj = np.repeat(np.arange(8), 30)
    t = np.concatenate([np.arange(30)] * 8)
    rng = np.random.default_rng(0)
    shuffled_t = np.concatenate([rng.permutation(30) for _ in range(8)])

    def table(time):
        return torch.tensor(np.stack([0.5 * time, 100.0 * traj], 1), dtype=torch.float64)

    ordered, shuffled, appearance = table(t), table(shuffled_t), table(0 * t)
    cfg = tcn.TCNConfig(embed_dim=0)
    lo = _mean_tcn_loss(ordered, cfg, lengths)
    assert lo < _mean_tcn_loss(shuffled, cfg, lengths) - 0.2
    assert lo < _mean_tcn_loss(appearance, cfg, lengths) - 0.2
    # other videos alone are solved by appearance: no gap without the same-video negative
    other_only = tcn.TCNConfig(embed_dim=0, same_video_negative=False)
    assert _mean_tcn_loss(appearance, other_only, lengths) <= _mean_tcn_loss(
        ordered, other_only, lengths) + 1e-6


VIP_INDICES = {  # trajectory 0 (frames 0-9) and 1 (10-19); sample 2 stands at the goal
    "initial_index": [0, 10, 0, 10],
    "final_index": [9, 19, 9, 19],
    "obs_index": [2, 14, 9, 18],
    "next_obs_index": [3, 15, 9, 19],
}


def _vip_hand(nets, batch, gamma):
    e = {k: _embed(nets, _feat(batch, k)) for k in ("initial_obs", "final_obs", "obs", "next_obs")}
    n = len(batch["obs"])
    attract = 0.0
    terms = []
    for i in range(n):
        g = e["final_obs"][i]
        v0 = -np.linalg.norm(e["initial_obs"][i] - g)
        vs = -np.linalg.norm(e["obs"][i] - g)
        vs1 = -np.linalg.norm(e["next_obs"][i] - g)
        r = 0.0 if VIP_INDICES["obs_index"][i] == VIP_INDICES["final_index"][i] else -1.0
        attract += (1 - gamma) * -v0 / n
        terms.append(math.exp(-(r + gamma * vs1 - vs)))  # = exp(V(s,g) + 1 - γV(s',g)) if r = -1
    return attract + math.log(sum(terms) / n)


def test_vip_loss_matches_hand_computation(frames, flat_encoder, make_batch):
    torch.manual_seed(0)
    cfg = vip.VIPConfig(embed_dim=4, discount=0.98)
    nets = vip.create(cfg, flat_encoder(3, 2, 2)).double()
    batch = make_batch(VIP_INDICES, frames)
    loss, metrics = vip.loss_fn(nets, None, batch, cfg)
    assert loss.item() == pytest.approx(_vip_hand(nets, batch, 0.98), rel=1e-9)
    assert metrics["vip/reward_mean"].item() == pytest.approx(-0.75)
    loss.backward()  # s == g for sample 2: the zero distance must not give NaN gradients
    assert all(torch.isfinite(p.grad).all() for p in nets.parameters())
    with torch.no_grad():
        v = vip.value(nets, batch["obs"], batch["final_obs"])
    assert v[2].item() == 0.0 and (v <= 0).all()


def test_vip_negatives_and_penalties_add_terms(frames, flat_encoder, make_batch):
    torch.manual_seed(0)
    nets = vip.create(vip.VIPConfig(embed_dim=4), flat_encoder(3, 2, 2)).double()
    batch = make_batch(VIP_INDICES, frames)
    base = vip.loss_fn(nets, None, batch, vip.VIPConfig(embed_dim=4))[0].item()
    with_l1 = vip.loss_fn(nets, None, batch, vip.VIPConfig(embed_dim=4, l1_weight=0.5))[0].item()
    e = np.concatenate([_embed(nets, _feat(batch, k))
                        for k in ("initial_obs", "final_obs", "obs", "next_obs")])
    assert with_l1 - base == pytest.approx(0.5 * np.abs(e).sum(1).mean(), rel=1e-9)
    neg = vip.loss_fn(nets, None, batch, vip.VIPConfig(embed_dim=4, num_negatives=2))[0]
    assert torch.isfinite(neg) and neg.item() != pytest.approx(base)
    with pytest.raises(DataError, match="final_obs"):
        vip.loss_fn(nets, None, {k: v for k, v in batch.items() if k != "final_obs"},
                    vip.VIPConfig())
    for bad in ({"discount": 1.0}, {"num_negatives": -1}, {"l2_weight": -0.1}):
        with pytest.raises(ConfigError, match="vip"):
            vip.VIPConfig(**bad)


def test_none_objective_is_frozen_and_zero(frames, flat_encoder, make_batch):
    from torch import nn

    enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    enc.out_dim = 3
    nets = none.create(none.NoneConfig(), enc)
    assert not any(p.requires_grad for p in nets.parameters())
    batch = make_batch({"obs_index": [0, 1], "goal_index": [5, 1]}, frames)
    batch = {k: (v.float() if k in ("obs", "goal") else v) for k, v in batch.items()}
    loss, metrics = none.loss_fn(nets, None, batch, none.NoneConfig())
    assert loss.item() == 0.0 and not loss.requires_grad and metrics["none/loss"] == 0.0
    v = none.value(nets, batch["obs"], batch["goal"])
    f_s, f_g = enc(batch["obs"]), enc(batch["goal"])
    torch.testing.assert_close(v, -(f_s - f_g).norm(dim=1))
    assert v[1].item() == 0.0  # the goal itself is at distance 0


def test_tcn_positives_are_rarely_the_final_frame_at_quickstart_lengths():
    """The earlier default (future_obs, Geometric(0.01)) made 86 % of the positives the final
    frame on the quickstart video (125 videos of 17-56 frames); the default TCN positive is
    the final frame about as often as any frame near the end."""
    from vptr.data.config import SamplerConfig
    from vptr.data.sampling import sample_index_batch
    from vptr.pretrain import get_objective

    lengths = np.random.default_rng(0).integers(17, 57, 125)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cfg = tcn.TCNConfig()
    window = get_objective("tcn").near_window(cfg)
    assert window == cfg.positive_window and cfg.positive == "near"
    b = sample_index_batch(np.random.default_rng(1), offsets, lengths, SamplerConfig(),
                           20_000, near_window=window)
    used = b["near_valid"]  # rows in the loss
    assert np.mean((b["near_index"] == b["final_index"])[used]) < 0.08
    assert np.mean(b["future_index"] == b["final_index"]) > 0.8  # positive = "future"


def test_tcn_real_training_step_on_decoded_video(square_videos, tmp_path):
    """Real frames through the loader (2-frame stacks, random shift) -> one Adam step."""
    from vptr.data.cache import open_video_source
    from vptr.data.config import SamplerConfig, VideoSourceConfig
    from vptr.data.loader import PretrainSampler
    from vptr.nets import make_encoder

    store = open_video_source(square_videos, VideoSourceConfig(
        image_size=16, decode_workers=1, progress=False, cache_dir=str(tmp_path)))
    cfg = tcn.TCNConfig(embed_dim=8, positive_window=2)
    batch = PretrainSampler(store, SamplerConfig(frame_stack=2, shift_pad=2), seed=0,
                            near_window=cfg.positive_window).sample(16, step=0)
    assert batch["near_obs"].shape == batch["far_obs"].shape == (16, 6, 16, 16)
    torch.manual_seed(0)
    nets = tcn.create(cfg, make_encoder("impala_small", 6, 16))
    opt = torch.optim.Adam(nets.parameters(), lr=1e-3)
    loss, metrics = tcn.loss_fn(nets, None, batch, cfg)
    opt.zero_grad()
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in nets.parameters())
    opt.step()
    assert 0 <= metrics["tcn/ordered"].item() <= 1
    assert torch.isfinite(tcn.loss_fn(nets, None, batch, cfg)[0])
