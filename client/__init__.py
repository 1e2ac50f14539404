"""Client side: torch-free contract, Triton gRPC, search, service, CLI."""
