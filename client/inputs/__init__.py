"""Turning raw user inputs into model inputs: image decoding/preprocessing and the CLIP tokenizer."""
