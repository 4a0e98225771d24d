"""The node agent and the worker runtime it runs (model, data, ZeRO-ready flat state)."""
