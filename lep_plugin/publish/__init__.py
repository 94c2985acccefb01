"""Publishing an adapted model: its model card (card.py, written by lep-merge and the plugin through
outputs.py) and a GGUF file for llama.cpp written by llama.cpp's own converter (gguf.py, convert.py,
llama_cpp.py, sentencepiece.py)."""
