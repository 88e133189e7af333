"""Benchmarks: commands that print tables (figures go into BUILD_NOTES.md).

throughput  meta-training and evaluation tasks/s (python -m leo_tf.bench)
data        the episode pipeline alone (python -m leo_tf.bench.data)
regression  LEO against MAML on sines and lines (python -m leo_tf.bench.regression)
serving     a SavedModel's latency as TF Serving runs it (python -m leo_tf.bench.serving)
resources   peak memory of the process
"""

__all__ = ["data", "regression", "resources", "serving", "throughput"]
