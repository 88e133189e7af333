"""From images to embeddings: stage 1 of appendix B.7, and Omniglot end to end.

backbones          conv4 and wide residual networks
omniglot           the Omniglot drawings, the Vinyals split, rotated classes
pretrain           stage 1: supervised pre-training, embeddings in the published format
                   (python -m leo_tf.images.pretrain)
omniglot_pipeline  stage 1 and stage 2 on Omniglot in one command
                   (python -m leo_tf.images.omniglot_pipeline)
"""

__all__ = ["backbones", "omniglot", "omniglot_pipeline", "pretrain"]
