"""Load tests of the gRPC API with locust: the checkout workload, the gRPC User and the
seeding step (README.md here)."""
