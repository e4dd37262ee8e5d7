"""Gram-based aggregators: one module per method, each registering itself."""
