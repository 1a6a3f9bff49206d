"""Evaluation: scoring, bits per character, the zero-shot suite, the report, the generation probe."""
