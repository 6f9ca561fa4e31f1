from .base import ComposedQuery, Retriever, map_tensors
from .build import VARIANTS, build_model
from .image_encoder import GRAINS

__all__ = ["ComposedQuery", "GRAINS", "Retriever", "VARIANTS", "build_model", "map_tensors"]
