"""Built-in tasks that need no data files (synthetic, generated from a seed)."""
