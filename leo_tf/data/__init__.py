"""Data: the published embeddings format, episodes, the synthetic set, atomic writes.

atomic            files and folders written so that readers never see a part
embeddings        the published LEO embeddings pickles: safe loading, validation, writing
episodes          N-way K-shot problem instances, counter-based and reproducible
synthetic         a deterministic set in the published format (python -m leo_tf.data.synthetic)
tfds_embeddings   a TensorFlow Datasets builder of the embeddings
random_problems   random few-shot problems for benchmarks, examples and tests
"""

__all__ = ["atomic", "embeddings", "episodes", "random_problems", "synthetic",
           "tfds_embeddings"]
