"""Loss-based weightings: one module per method, each registering itself."""
