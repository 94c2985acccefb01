"""LEP step 4, ``lep-merge``: the trained embeddings carried into the instruct model with a d×d least-squares
correction."""
