"""One rule per concept shared by every capability: atomic outputs, corpora, text units, tokenizers, ranks."""
