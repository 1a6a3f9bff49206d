"""babyssm: a small hierarchical character-level state-space language model for BabyLM."""

__version__ = "0.1.0"
