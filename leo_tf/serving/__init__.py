"""SavedModels for TF Serving, adaptation included, through one publishing path.

publish         model versions under a base path, written atomically; checkpoint digests
savedmodel      what every served learner shares: its variables, warmup records
classification  the classification signatures (embeddings, images; one task or B tasks)
images          the image side: stage 1's preprocessing and backbone in the graph, request checks
regression      the regression signature (the generator of f_theta)
export          export a run's checkpoint as the next version (python -m leo_tf.export)
"""

__all__ = ["classification", "export", "images", "publish", "regression", "savedmodel"]
