"""The gRPC search service: servicer, health, Prometheus metrics, settings."""
