"""Benchmarks: figures printed side by side with a baseline measured in the same run."""
