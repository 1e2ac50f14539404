"""The shared contract: tensor names, model spec, export manifest, crash-safe file plumbing."""
