"""The control plane: store backends, planner, gRPC controller service, chaos admin."""
