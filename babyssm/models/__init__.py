"""The language models: the ``CharLM`` interface and registry, the hierarchical SSM (its
configuration, presets, levels and scan), and the GRU, transformer and n-gram baselines.

The modules holding the hierarchical model's forward equations (``config``, ``scan``,
``levels``) import only torch, the standard library and each other (by relative import):
``babyssm export`` copies them verbatim beside the Hugging Face remote code.
"""
