"""The training loop: sub-center ArcFace on a Source, checkpointed every epoch and resumable."""
