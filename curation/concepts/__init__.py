"""Concepts: name normalisation, the words the miner drops, mining with spaCy, the vocabulary and caption matching."""
