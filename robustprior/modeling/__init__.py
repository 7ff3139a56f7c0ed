"""RobustSAM's modules, one concept per file, around segment_anything's own SAM modules."""
from .anti_degradation_mask_features import AntiDegradationMaskFeatures, SqueezeExcitation
from .anti_degradation_output_tokens import AntiDegradationOutputTokens
from .feature_fusion import RobustFeatureFusion
from .fourier_degradation_suppression import FourierDegradationSuppression
from .robust_sam import DecoderOutput, ImageFeatures, RobustComponents, RobustSAM
from .selective_convolution import BranchAttention, SelectiveConvolution

__all__ = [
    "AntiDegradationMaskFeatures",
    "AntiDegradationOutputTokens",
    "BranchAttention",
    "DecoderOutput",
    "FourierDegradationSuppression",
    "ImageFeatures",
    "RobustComponents",
    "RobustFeatureFusion",
    "RobustSAM",
    "SelectiveConvolution",
    "SqueezeExcitation",
]
