"""Scoring: embed every sample and measure its angles to the sub-centers (no thresholds here)."""
