"""Top-level jobs that wire the world, tokenizers and data together (the CLI calls these)."""
