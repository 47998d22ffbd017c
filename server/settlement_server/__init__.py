"""gRPC server of the settlement core."""
