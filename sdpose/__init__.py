"""sdpose: SDPose (CVPR 2024) self-distilled pose estimators as a distributed training pipeline."""

__version__ = "0.1.0"
