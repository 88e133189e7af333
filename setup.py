"""leo_tf: Latent Embedding Optimization (Rusu et al., ICLR 2019) in TensorFlow 2 / Keras 3."""

import setuptools

setuptools.setup(
    name="leo_tf",
    version="0.1.0",
    description="Meta-Learning with Latent Embedding Optimization in TensorFlow 2 / Keras 3",
    packages=setuptools.find_packages(include=["leo_tf", "leo_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow~=2.21.0",
        "tensorflow-probability~=0.25.0",
        # TFP 0.25 refuses to import without tf-keras, even for distributions.
        "tf-keras~=2.21.0",
        "tensorflow-datasets~=4.9",
        "numpy~=2.0",
        "absl-py~=2.1",
        # tf.summary needs TensorBoard, which TensorFlow 2.21 no longer pulls in.
        "tensorboard~=2.21",
        # Warmup records (PredictionLog) for TF Serving, written by leo_tf.export.
        "tensorflow-serving-api~=2.21.0",
        # TFDS 4.9 needs it to prepare a dataset but does not declare it (tensorflow/datasets#11212).
        "importlib_resources~=7.0",
        # Figures: regression samples (figure 3) and the latent space (figure 4).
        "matplotlib~=3.8",
        # Hyperparameter search (leo_tf.search): studies in SQLite, PostgreSQL or MySQL, shared by workers.
        "optuna~=5.0",
    ],
    # Hypothesis fuzzes the embedding reader, the flags and the served signatures.
    extras_require={"test": ["pytest~=9.0", "pytest-xdist~=3.8", "hypothesis~=6.100"]},
)
