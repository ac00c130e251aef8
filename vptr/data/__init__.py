"""Video data for TD pretraining: sources -> decoded-frame cache -> sampled batches.

    from vptr.data import VideoSourceConfig, SamplerConfig, open_video_source, make_loader
    store = open_video_source("path/to/videos", VideoSourceConfig(image_size=64, fps=10))
    train, val = store.split(0.1, seed=0)
    for batch in make_loader(train, SamplerConfig(), batch_size=64, seed=0, num_workers=2):
        ...

Modules: ``readers`` (find trajectories), ``decode`` (PyAV/PIL -> frames), ``cache``
(FrameStore, open_video_source), ``sampling`` (pure index sampling), ``augment``
(random_shift), ``loader`` (PretrainSampler, make_loader).

Names are imported on first use (PEP 562) so that decoding workers, which import this
package, do not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VideoSourceConfig": "vptr.data.config",
    "SamplerConfig": "vptr.data.config",
    "FrameStore": "vptr.data.cache",
    "open_video_source": "vptr.data.cache",
    "Skip": "vptr.data.readers",
    "list_source": "vptr.data.readers",
    "split_trajectories": "vptr.data.sampling",
    "random_shift": "vptr.data.augment",
    "PretrainSampler": "vptr.data.loader",
    "make_loader": "vptr.data.loader",
}

__all__ = ["FrameStore", "PretrainSampler", "SamplerConfig", "Skip", "VideoSourceConfig",
           "list_source", "make_loader", "open_video_source", "random_shift",
           "split_trajectories"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vptr.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
