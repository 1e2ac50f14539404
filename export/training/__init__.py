"""Contrastive (CLIP) training of a spec's model plus attribute heads; loop.train is the entry point."""
