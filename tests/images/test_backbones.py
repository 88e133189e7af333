"""Tests for leo_tf.images.backbones: shapes, parameter counts derived by hand, modes, unknown batch sizes."""

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.images import backbones


def _trainable(model):
  return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_conv4_shapes_and_parameter_count():
  model = backbones.conv4(28, 1, (64, 64, 64, 64))
  assert model.output_shape == (None, 64)
  # conv 3x3x1x64, then 3 x conv 3x3x64x64 (no biases); BN: gamma, beta (+ 2 statistics).
  assert _trainable(model) == 9 * 64 + 3 * 9 * 64 * 64 + 4 * 2 * 64  # 111,680
  assert model.count_params() == 111_680 + 4 * 2 * 64  # + moving mean and variance
  # 28 -> 14 -> 7 -> 3 -> 1 with 2x2 max-pooling.
  assert [l.output.shape[1] for l in model.layers if l.name.endswith("_pool")] == [14, 7, 3, 1]
  wide = backbones.conv4(28, 1, (32, 32, 32, 96))
  assert wide.output_shape == (None, 96)


def test_wide_resnet_28_10_has_the_published_size():
  # WRN-28-10 has 36,479,194 trainable parameters with its 10-class CIFAR head
  # (640 x 10 + 10 = 6,410; Zagoruyko and Komodakis 2016: "36.5M").
  model = backbones.wide_resnet(84, 3, depth=28, width=10)
  assert model.output_shape == (None, 640)
  assert _trainable(model) == 36_479_194 - 6_410


def test_wide_resnet_reduced_size_by_hand():
  # WRN-10-1: stem 3x3x3x16; one block per group (16->16, 16->32 /2, 32->64 /2);
  # projection shortcuts where the width changes; BN gamma + beta; final BN.
  stem = 9 * 3 * 16
  group0 = 2 * 16 + 9 * 16 * 16 + 2 * 16 + 9 * 16 * 16
  group1 = 2 * 16 + 16 * 32 + 9 * 16 * 32 + 2 * 32 + 9 * 32 * 32
  group2 = 2 * 32 + 32 * 64 + 9 * 32 * 64 + 2 * 64 + 9 * 64 * 64
  model = backbones.wide_resnet(32, 3, depth=10, width=1)
  assert _trainable(model) == stem + group0 + group1 + group2 + 2 * 64  # 77,200
  features = model(np.random.default_rng(0).random((2, 32, 32, 3), np.float32), training=False)
  assert features.shape == (2, 64)
  # 32 -> 32 -> 16 -> 8 before the global average.
  assert model.get_layer("final_relu").output.shape[1:] == (8, 8, 64)


def test_training_switches_batch_norm_and_graph_matches_eager():
  model = backbones.conv4(28, 1, (8, 8, 8, 8))
  images = np.random.default_rng(1).random((5, 28, 28, 1), np.float32)
  eager_eval = model(images, training=False).numpy()
  spec = tf.TensorSpec([None, 28, 28, 1], tf.float32)  # unknown batch size
  graph = tf.function(lambda x: model(x, training=False), input_signature=[spec])
  np.testing.assert_allclose(graph(images).numpy(), eager_eval, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(graph(images[:2]).numpy(), eager_eval[:2], rtol=1e-5, atol=1e-6)
  # Batch statistics in training (which also moves the running statistics).
  eager_train = model(images, training=True).numpy()
  assert not np.allclose(eager_eval, eager_train, atol=1e-3)
  assert not np.allclose(model(images, training=False).numpy(), eager_eval, atol=1e-4)


def test_config_refusals_name_the_fix():
  with pytest.raises(ValueError, match=r"6 n \+ 4"):
    backbones.BackboneConfig(name="wide_resnet", wrn_depth=27)
  with pytest.raises(ValueError, match="4 positive channel counts"):
    backbones.BackboneConfig(conv4_channels=(64, 64, 64))
  with pytest.raises(ValueError, match="must be one of"):
    backbones.BackboneConfig(name="resnet12")
  assert backbones.BackboneConfig(name="wide_resnet", wrn_width=10).feature_dim == 640
  assert backbones.BackboneConfig(conv4_channels=(64, 64, 64, 128)).feature_dim == 128


def test_feature_layers_by_hand_and_sharing_the_trained_weights(tmp_path):
  # conv4 on 28x28 with channels (4, 6, 8, 10): blocks end at 14, 7, 3, 1 pixels.
  config = backbones.BackboneConfig(conv4_channels=(4, 6, 8, 10))
  assert config.feature_layers == "block3_pool" and config.feature_dim == 10
  taps = backbones.feature_taps(config)
  assert (taps["block2_flat"], taps["block2_avg"], taps["block1_flat"]) == (3 * 3 * 8, 8, 7 * 7 * 6)
  model = backbones.build(config, seed=3)
  model.save_weights(str(tmp_path / "b.weights.h5"))
  images = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
  relu2 = keras_output(model, "block2_relu", images)  # [2, 7, 7, 8]
  pool2 = keras_output(model, "block2_pool", images)  # [2, 3, 3, 8]
  expected = {
      "block2_avg": relu2.mean(axis=(1, 2)),
      "block2_flat": pool2.reshape(2, -1),
      "block2_flat+block3_pool": np.concatenate([pool2.reshape(2, -1),
                                                 model(images, training=False).numpy()], -1),
  }
  for layers, want in expected.items():
    chosen = backbones.BackboneConfig(conv4_channels=(4, 6, 8, 10), feature_layers=layers)
    fresh = backbones.build(chosen, seed=9)  # other initial weights, then stage 1's
    fresh.load_weights(str(tmp_path / "b.weights.h5"))
    features = backbones.feature_extractor(fresh, chosen)(images, training=False).numpy()
    assert features.shape == (2, chosen.feature_dim)
    np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-6, err_msg=layers)
  assert backbones.feature_extractor(model, config) is model  # the last layer: the backbone


def keras_output(model, layer_name, images):
  import keras  # pylint: disable=g-import-not-at-top
  probe = keras.Model(model.input, model.get_layer(layer_name).output)
  return probe(images, training=False).numpy()


def test_wide_resnet_layer_21_is_the_papers_and_refusals_name_the_layers():
  wrn = backbones.BackboneConfig(name="wide_resnet", image_size=84, image_channels=3)
  assert wrn.feature_layers == "layer21" and wrn.feature_dim == 640
  taps = backbones.feature_taps(wrn)
  # Stem = layer 1; 12 blocks of 2 convolutions end at layers 3, 5, ..., 25; 160, 320, 640 wide.
  assert list(taps)[:3] == ["layer1", "layer3", "layer5"] and taps["layer25"] == 640
  assert (taps["layer9"], taps["layer11"], taps["layer17"], taps["layer19"]) == (160, 320, 320, 640)
  small = backbones.BackboneConfig(name="wide_resnet", image_size=16, image_channels=3,
                                   wrn_depth=10, wrn_width=1, feature_layers="layer5+final")
  model = backbones.build(small)
  extractor = backbones.feature_extractor(model, small)
  images = np.random.default_rng(1).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  block1 = keras_output(model, "group1_block0_add", images).mean(axis=(1, 2))  # [2, 32]
  np.testing.assert_allclose(extractor(images, training=False).numpy(),
                             np.concatenate([block1, model(images, training=False).numpy()], -1),
                             rtol=1e-5, atol=1e-6)
  assert backbones.BackboneConfig(name="wide_resnet", wrn_depth=16).feature_layers == "final"
  with pytest.raises(ValueError, match="'layer21' is not a layer of this conv4.*block3_pool"):
    backbones.BackboneConfig(feature_layers="layer21")
  with pytest.raises(ValueError, match="'layer4' is not a layer of this wide_resnet"):
    backbones.BackboneConfig(name="wide_resnet", feature_layers="layer3+layer4")
