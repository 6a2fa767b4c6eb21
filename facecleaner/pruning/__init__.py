"""Pruning: thresholds applied to scores, pure and vectorised (scoring never decides, pruning never measures)."""
