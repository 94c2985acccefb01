"""Data for the optional calibration LoRA (LEP step 5): copy-instruction examples."""
