"""facecleaner: clean noisy face-recognition datasets with Sub-center ArcFace."""

__version__ = "0.1.0"
