"""Plain nn.Modules and the pure tensor functions around them (no data loading, no config parsing)."""
