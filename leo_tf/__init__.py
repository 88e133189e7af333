"""leo_tf: Meta-Learning with Latent Embedding Optimization (Rusu et al., ICLR 2019).

Layers, each importing only those below it:
  core            the parts of the method (encoder, decoder, inner loops, objective, ...)
  data            embeddings, episodes, the synthetic set, atomic writes
  outer           the MetaLearner contract, the one outer step and fit loop, checkpoints
  classification  LEO, Meta-SGD, nearest class mean; their experiment
  regression      LEO generating an MLP, MAML; their experiment
  serving         SavedModels for TF Serving
  images          backbones, Omniglot, stage 1
  bench           benchmarks
Entry points: python -m leo_tf.train (train.py, flags in command_line.py),
python -m leo_tf.export (export.py) and python -m leo_tf.reproduce (reproduce.py,
stage 3: seeds trained again on train + val).

Importing the package does no work: no seeds are set and no files are read.
"""

__version__ = "0.1.0"
