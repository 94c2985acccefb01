"""Label-free evaluation: copy tasks, tokenization statistics and bits per character (``lep eval`` and the
training callback)."""
