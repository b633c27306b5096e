"""overfeat_tf: OverFeat (Sermanet et al., ICLR 2014) classification, localization and
detection as a Keras 3 / TensorFlow package.

    image -> pyramid -> trunk -> dense offset pooling -> heads -> boxes -> merge -> outputs
"""

from overfeat_tf.quiet import quiet_command_start

# Only in the package's own commands (`python -m overfeat_tf.<command>`, train.py, export.py):
# TensorFlow's C++ start-up lines stay hidden there. Any other process is left as it is.
quiet_command_start()

from overfeat_tf.architecture.config import (
    ACCURATE,
    FAST,
    TINY,
    ConvSpec,
    ModelConfig,
    model_config,
)
from overfeat_tf.models.backbone import OverFeat, load_model
from overfeat_tf.models.decoders import BoxMergeDecoder, GreedyMergeDecoder, NMSDecoder
from overfeat_tf.models.detector import OverFeatDetector, detect, localize
from overfeat_tf.models.inference import classify
from overfeat_tf.models.layers import DenseOffsetPooling, MatmulConv2D, OffsetInterleave
from overfeat_tf.models.losses import MinedDetectionLoss, WindowBoxLoss
from overfeat_tf.utils.version import __version__ as __version__

__all__ = [
    "ACCURATE",
    "FAST",
    "TINY",
    "BoxMergeDecoder",
    "ConvSpec",
    "DenseOffsetPooling",
    "GreedyMergeDecoder",
    "MatmulConv2D",
    "MinedDetectionLoss",
    "ModelConfig",
    "NMSDecoder",
    "OffsetInterleave",
    "OverFeat",
    "OverFeatDetector",
    "WindowBoxLoss",
    "classify",
    "detect",
    "load_model",
    "localize",
    "model_config",
]
