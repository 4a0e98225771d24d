"""Checkpoints (lazy async multi-level, universal format): see issue 4."""
