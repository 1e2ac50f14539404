"""The search engine facade and its request/response models."""
