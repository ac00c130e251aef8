"""vptr: robot learning from video.

Pretrain image encoders and value functions by TD learning on action-free video,
fine-tune chunked offline-RL policies on robot datasets, export a self-contained
policy and run it through a hardware abstraction layer (`robots`).
"""

__version__ = "0.1.0"
