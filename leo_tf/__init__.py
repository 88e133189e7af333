"""leo_tf: Meta-Learning with Latent Embedding Optimization (Rusu et al., ICLR 2019).

Importing the package does no work: no seeds are set and no files are read.
"""

__version__ = "0.1.0"
