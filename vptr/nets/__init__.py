"""Networks: image encoders (one registry, one interface) and MLP builders."""

from vptr.nets.encoders import ENCODERS, ImageEncoder, encoder_names, make_encoder
from vptr.nets.mlp import make_mlp

__all__ = ["ENCODERS", "ImageEncoder", "encoder_names", "make_encoder", "make_mlp"]
