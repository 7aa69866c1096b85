"""nnssl: self-supervised pretraining of a 3D Swin encoder and its transfer to segmentation inside nnU-Net v2."""

__version__ = "0.1.0"
