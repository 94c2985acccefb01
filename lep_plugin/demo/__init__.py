"""The end-to-end demo (``lep demo`` / ``make demo``): tiny models trained here, the whole method on CPU."""
