"""overfeat_tf: OverFeat (Sermanet et al., ICLR 2014) classification, localization and
detection as a Keras 3 / TensorFlow package.

    image -> pyramid -> trunk -> dense offset pooling -> heads -> boxes -> merge -> outputs
"""

from overfeat_tf.config import ACCURATE, FAST, TINY, ConvSpec, ModelConfig, get_config
from overfeat_tf.layers import DenseOffsetPooling, MatmulConv2D, OffsetInterleave
from overfeat_tf.losses import MinedDetectionLoss, WindowBoxLoss
from overfeat_tf.models import OverFeat, build_model

__version__ = "0.1.0"

__all__ = [
    "ACCURATE",
    "FAST",
    "TINY",
    "ConvSpec",
    "DenseOffsetPooling",
    "MatmulConv2D",
    "MinedDetectionLoss",
    "ModelConfig",
    "OffsetInterleave",
    "OverFeat",
    "WindowBoxLoss",
    "build_model",
    "get_config",
]
