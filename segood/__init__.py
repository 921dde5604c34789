"""segood: LiDAR-camera out-of-distribution segmentation with Feature Mixing."""

__version__ = "0.1.0"
