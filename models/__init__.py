from .base import ComposedQuery, Retriever, map_tensors
from .build import VARIANTS, build_model

__all__ = ["ComposedQuery", "Retriever", "VARIANTS", "build_model", "map_tensors"]
