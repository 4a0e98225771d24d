"""The wire contract (generated from elastiq.proto); imported by controller and agent."""
