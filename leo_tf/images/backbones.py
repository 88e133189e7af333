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

Stage 1 trains on the last layer's features, but the embeddings may come from
earlier: "we choose the intermediate feature representation in layer 21, given
that higher layers tend to specialize to the training distribution" (section
4.2.2). `BackboneConfig.feature_layers` names them, "+"-joined (concatenated
in that order), and `feature_extractor` builds the model that computes them
from a trained backbone (the same layers, so the same weights file):
  conv4        blockI_pool  block I's output after its 2x2 max-pool, averaged over
                            space (block3_pool is the last layer's, the default);
               blockI_avg   block I's ReLU output averaged over space (before the
                            max-pool);
               blockI_flat  block I's output after its max-pool, flattened.
  wide_resnet  layerL       the output of the stem (L = 1) or of the residual block
                            that ends with main-path convolution L (L = 3, 5, ...,
                            6n + 1), averaged over space; layer21, the paper's
                            choice (the second block of the last group, 640-d
                            for WRN-28-10), is the default for depth 28;
               final        the last batch norm and ReLU, averaged over space
                            (the default for other depths, where the paper
                            made no choice).
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
  # Where the embeddings come from, "+"-joined layer names (see the module doc); ""
  # means the backbone's default: conv4 block3_pool, wide_resnet the paper's layer 21.
  feature_layers: str = ""

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
    if not self.feature_layers:
      object.__setattr__(self, "feature_layers", self.default_feature_layers)
    taps = feature_taps(self)
    for layer in self.feature_layers.split("+"):
      if layer not in taps:
        raise ValueError(
            f"feature_layers: {layer!r} is not a layer of this {self.name}; choose from "
            f"{', '.join(taps)}, '+'-joined to concatenate (e.g. {self.default_feature_layers}).")

  @property
  def default_feature_layers(self) -> str:
    """conv4: the last layer's; WRN-28: the paper's layer 21; other WRN depths: the last layer's."""
    if self.name == "wide_resnet" and self.wrn_depth == 28:
      return "layer21"  # the output of group 3's second block, 640-d for WRN-28-10
    return self.final_layer

  @property
  def blocks_per_group(self) -> int:
    """n = (d - 4) / 6 residual blocks in each of the WRN's three groups."""
    return (self.wrn_depth - 4) // 6

  @property
  def final_layer(self) -> str:
    """The name of the last layer's features, the backbone's own output."""
    return "block3_pool" if self.name == "conv4" else "final"

  @property
  def final_dim(self) -> int:
    """The last layer's size, on which stage 1 trains its classifier."""
    if self.name == "conv4":
      return int(self.conv4_channels[-1])
    return 64 * self.wrn_width

  @property
  def feature_dim(self) -> int:
    """F, the size of the embeddings (feature_layers; the embedding_dim of stage 2)."""
    taps = feature_taps(self)
    return sum(taps[layer] for layer in self.feature_layers.split("+"))


def feature_taps(config: BackboneConfig) -> dict[str, int]:
  """Every layer `feature_layers` can name, with the size of its features."""
  if config.name == "conv4":
    taps, side = {}, config.image_size
    for i, channels in enumerate(config.conv4_channels):
      side //= 2  # after the block's 2x2 max-pool
      taps[f"block{i}_pool"] = taps[f"block{i}_avg"] = channels
      if side:
        taps[f"block{i}_flat"] = side * side * channels
    return taps
  n = config.blocks_per_group
  taps = {"layer1": 16}
  for j in range(3 * n):  # block j of all 3 n ends with main-path convolution 2 j + 3
    taps[f"layer{2 * j + 3}"] = 16 * 2 ** (j // n) * config.wrn_width
  taps["final"] = 64 * config.wrn_width
  return taps


def _tap_output(backbone: keras.Model, config: BackboneConfig, layer: str):
  """The Keras tensor [B, F_layer] of one named layer of a built backbone."""
  pool = lambda x: keras.layers.GlobalAveragePooling2D(name=f"{layer}_features")(x)
  if config.name == "conv4":
    block, kind = layer.split("_")
    if kind == "avg":
      return pool(backbone.get_layer(f"{block}_relu").output)
    x = backbone.get_layer(f"{block}_pool").output
    return pool(x) if kind == "pool" else keras.layers.Flatten(name=f"{layer}_features")(x)
  if layer == "final":
    return backbone.output
  number = int(layer[len("layer"):])
  if number == 1:
    return pool(backbone.get_layer("stem_conv").output)
  j, n = (number - 3) // 2, config.blocks_per_group
  return pool(backbone.get_layer(f"group{j // n}_block{j % n}_add").output)


def feature_extractor(backbone: keras.Model, config: BackboneConfig) -> keras.Model:
  """images [B, S, S, C] -> the features config.feature_layers names, [B, config.feature_dim].

  Shares the layers (and so the weights) of `backbone`, which `build(config)` made;
  the last layer's features return `backbone` itself.
  """
  if config.feature_layers == config.final_layer:
    return backbone
  layers = config.feature_layers.split("+")
  outputs = [_tap_output(backbone, config, layer) for layer in layers]
  features = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(
      name="features")(outputs)  # [B, F]
  return keras.Model(backbone.input, features, name=f"{backbone.name}_features")


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
