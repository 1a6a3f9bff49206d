"""Text in: the 128-symbol vocabulary, cleaning, the prepared corpus and the BabyLM download."""
