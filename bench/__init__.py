"""Benchmarks: each module runs on its own servers and prints ratios against a baseline measured in the same run."""
