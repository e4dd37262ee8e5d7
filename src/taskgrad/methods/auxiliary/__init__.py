"""Primary/auxiliary methods: one module per method, each registering itself."""
