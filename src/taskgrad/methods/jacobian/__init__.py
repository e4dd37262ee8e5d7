"""Jacobian aggregators: one module per method (needs the Jacobian itself), each registering itself."""
