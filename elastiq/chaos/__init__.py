"""Chaos runs: a job on real processes through a timed schedule of real faults
(`elastiq chaos run SCENARIO.yaml`); scenario, cluster, faults, runner."""
