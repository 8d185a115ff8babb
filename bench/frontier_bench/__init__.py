"""Frontier benchmarks: workloads, the open-loop load generator, baselines, sweeps and the frontier report."""
