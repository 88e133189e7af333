"""Stage-1 feature extractors (appendix B.2): images [B, H, W, C] -> features [B, F].

  conv4        the 4-block convolutional net of the few-shot literature for
               Omniglot (Vinyals et al. 2016; Snell et al. 2017): 4 x [3x3 conv,
               batch norm, ReLU, 2x2 max-pool]; 28x28 -> 1x1, so the features
               are the last block's F = channels[-1] activations.
  wide_resnet  WRN-d-k (Zagoruyko and Komodakis 2016), which the paper trains on
               84x84 miniImageNet / tieredImageNet images: a 3x3 stem of 16
               channels, three groups of (d - 4) / 6 pre-activation basic blocks
               of 16k, 32k and 64k channels (strides 1, 2, 2), then batch norm,
               ReLU and global average pooling: F = 64k (640 for WRN-28-10).
               Depth and width are arguments, so the same code runs at reduced
               size on a CPU (WRN-10-1 in the tests).

Both are plain functional keras.Models whose `training` argument switches batch
norm (and WRN dropout) between batch and running statistics; the backbone
itself holds no classifier (stage 1 adds one, see pretrain.py).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras

BACKBONES = ("conv4", "wide_resnet")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Which feature extractor, and its size."""

  name: str = "conv4"  # conv4 (Omniglot) or wide_resnet (84x84 images)
  image_size: int = 28  # H = W of the input images
  image_channels: int = 1  # 1 for Omniglot, 3 for RGB
  conv4_channels: tuple[int, ...] = (64, 64, 64, 64)  # conv4: channels of the 4 blocks
  wrn_depth: int = 28  # wide_resnet: d, with (d - 4) % 6 == 0 (28: 4 blocks per group)
  wrn_width: int = 10  # wide_resnet: k, the widening factor (F = 64 k)
  wrn_dropout_rate: float = 0.0  # wide_resnet: dropout between the two convs of a block

  def __post_init__(self):
    if self.name not in BACKBONES:
      raise ValueError(f"backbone name must be one of {BACKBONES}, got {self.name!r}.")
    if self.image_size < 1 or self.image_channels < 1:
      raise ValueError(
          f"image_size and image_channels must be >= 1, got {self.image_size} and "
          f"{self.image_channels}.")
    if len(self.conv4_channels) != 4 or min(self.conv4_channels) < 1:
      raise ValueError(
          f"conv4_channels must be 4 positive channel counts (one per block), got "
          f"{self.conv4_channels!r}, e.g. (64, 64, 64, 64).")
    if self.wrn_depth < 10 or (self.wrn_depth - 4) % 6:
      raise ValueError(
          f"wrn_depth must be 6 n + 4 with n >= 1 (10, 16, 22, 28, ...), got {self.wrn_depth}.")
    if self.wrn_width < 1:
      raise ValueError(f"wrn_width must be >= 1, got {self.wrn_width}.")
    if not 0.0 <= self.wrn_dropout_rate < 1.0:
      raise ValueError(f"wrn_dropout_rate must be in [0, 1), got {self.wrn_dropout_rate}.")

  @property
  def feature_dim(self) -> int:
    """F, the size of the features (the embedding_dim of stage 2)."""
    if self.name == "conv4":
      return int(self.conv4_channels[-1])
    return 64 * self.wrn_width


def conv4(image_size: int = 28, image_channels: int = 1,
          channels: Sequence[int] = (64, 64, 64, 64), *, seed: int = 0,
          name: str = "conv4") -> keras.Model:
  """The 4-block conv net: images [B, S, S, C] -> features [B, channels[-1]].

  Each block is conv 3x3 (same padding, no bias) -> batch norm -> ReLU -> max-pool
  2x2, so 28x28 becomes 14, 7, 3, 1; the features are the global average of the
  last block (the identity at 1x1, a mean for larger inputs).
  """
  inputs = keras.Input((image_size, image_size, image_channels), name="images")
  x = inputs  # [B, S, S, C]
  for i, c in enumerate(channels):
    x = keras.layers.Conv2D(c, 3, padding="same", use_bias=False, name=f"block{i}_conv",
                            kernel_initializer=keras.initializers.HeNormal(seed=seed + i))(x)
    x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
    x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)  # [B, s, s, c] -> [B, s/2, s/2, c]
  features = keras.layers.GlobalAveragePooling2D(name="pool")(x)  # [B, s, s, F] -> [B, F]
  return keras.Model(inputs, features, name=name)


def _wrn_block(x, channels: int, stride: int, dropout_rate: float, seed: int, name: str):
  """Pre-activation basic block: BN-ReLU-conv3x3(stride)-[dropout]-BN-ReLU-conv3x3, + shortcut."""
  init = keras.initializers.HeNormal
  pre = keras.layers.BatchNormalization(name=f"{name}_bn0")(x)
  pre = keras.layers.ReLU(name=f"{name}_relu0")(pre)
  if stride != 1 or x.shape[-1] != channels:
    # Projection shortcut from the pre-activated input (as the WRN reference code).
    shortcut = keras.layers.Conv2D(channels, 1, strides=stride, use_bias=False,
                                   kernel_initializer=init(seed=seed + 2),
                                   name=f"{name}_shortcut")(pre)
  else:
    shortcut = x
  h = keras.layers.Conv2D(channels, 3, strides=stride, padding="same", use_bias=False,
                          kernel_initializer=init(seed=seed), name=f"{name}_conv0")(pre)
  h = keras.layers.BatchNormalization(name=f"{name}_bn1")(h)
  h = keras.layers.ReLU(name=f"{name}_relu1")(h)
  if dropout_rate > 0:
    h = keras.layers.Dropout(dropout_rate, seed=seed + 3, name=f"{name}_dropout")(h)
  h = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False,
                          kernel_initializer=init(seed=seed + 1), name=f"{name}_conv1")(h)
  return keras.layers.Add(name=f"{name}_add")([shortcut, h])


def wide_resnet(image_size: int = 84, image_channels: int = 3, depth: int = 28, width: int = 10,
                dropout_rate: float = 0.0, *, seed: int = 0, name: str | None = None
                ) -> keras.Model:
  """WRN-depth-width: images [B, S, S, C] -> features [B, 64 * width].

  Spatial sizes for S = 84: 84 (stem, group 1), 42 (group 2), 21 (group 3).
  """
  config = BackboneConfig(name="wide_resnet", image_size=image_size,
                          image_channels=image_channels, wrn_depth=depth, wrn_width=width,
                          wrn_dropout_rate=dropout_rate)  # validates the arguments
  blocks_per_group = (config.wrn_depth - 4) // 6
  inputs = keras.Input((image_size, image_size, image_channels), name="images")
  x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False,
                          kernel_initializer=keras.initializers.HeNormal(seed=seed),
                          name="stem_conv")(inputs)  # [B, S, S, 16]
  for g, (base, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
    for b in range(blocks_per_group):
      x = _wrn_block(x, base * width, stride if b == 0 else 1, dropout_rate,
                     seed=seed + 100 * (g + 1) + 10 * b, name=f"group{g}_block{b}")
  x = keras.layers.BatchNormalization(name="final_bn")(x)
  x = keras.layers.ReLU(name="final_relu")(x)  # [B, S/4, S/4, 64 k]
  features = keras.layers.GlobalAveragePooling2D(name="pool")(x)  # [B, S/4, S/4, F] -> [B, F]
  return keras.Model(inputs, features, name=name or f"wrn_{depth}_{width}")


def build(config: BackboneConfig, *, seed: int = 0) -> keras.Model:
  """The backbone that `config` describes: images [B, S, S, C] -> features [B, F]."""
  if config.name == "conv4":
    return conv4(config.image_size, config.image_channels, config.conv4_channels, seed=seed)
  return wide_resnet(config.image_size, config.image_channels, config.wrn_depth,
                     config.wrn_width, config.wrn_dropout_rate, seed=seed)
