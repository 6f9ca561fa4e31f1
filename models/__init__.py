from .base import ComposedQuery, Retriever, TrainingInputs, map_tensors
from .build import VARIANTS, build_model
from .clip import BACKBONES as CLIP_BACKBONES
from .clip import INPUT_SIZES as CLIP_INPUT_SIZES
from .clip import is_clip
from .image_encoder import GRAINS

__all__ = ["CLIP_BACKBONES", "CLIP_INPUT_SIZES", "ComposedQuery", "GRAINS", "Retriever", "TrainingInputs",
           "VARIANTS", "build_model", "is_clip", "map_tensors"]
