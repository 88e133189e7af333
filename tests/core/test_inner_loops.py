"""leo_tf.core.inner_loops: both inner loops on a problem small enough to solve by hand.

The problem: 2-way 1-shot, 1-D features. Class 0's support example is x = +1,
class 1's is x = -1. Logits of x are (w_0 x, w_1 x). By the symmetry of the
problem w_1 = -w_0 at every step, and the summed support cross-entropy has

    dL/dw_0 = sum_x (p_0(x) - y_0(x)) x = -2 sigmoid(-2 w_0),   dL/dw_1 = -dL/dw_0,

because each example's wrong-class probability is sigmoid(-2 w_0).

Latent loop: the decoder kernel is [[a, 0]] (n_z = 1), so w = a z (the second
half, the unnormalised stddev, is unused in evaluation) and dL/dz = a dL/dw:

    z_0 <- z_0 + 2 alpha a sigmoid(-2 a z_0).

With a = 1, alpha = 1 from z = 0:  0 -> 1 -> 1 + 2 sigmoid(-2) = 1.2384058
-> 1.2384058 + 2 sigmoid(-2.4768117) = 1.3934055.

Fine-tuning loop: w_0 <- w_0 + 2 eta sigmoid(-2 w_0). With eta = 0.5 from 0:
0 -> 0.5 -> 0.5 + sigmoid(-1) = 0.7689414 -> 0.7689414 + sigmoid(-1.5378828) = 0.9457847.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core import classifier
from leo_tf.core import decoder as decoder_lib
from leo_tf.core import inner_loops


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def _hand_problem():
  tr_input = tf.constant([[[[1.0]], [[-1.0]]]], tf.float64)  # [B=1, N=2, K=1, D=1]
  tr_output = tf.constant([[[0], [1]]], tf.int32)  # [1, 2, 1]
  return tr_input, tr_output


def _loss_fn(tr_input, tr_output):
  def loss_fn(w, i):
    del i
    return classifier.inner_loss(tr_input, tr_output, w)[0]
  return loss_fn


@pytest.mark.parametrize("num_steps", [1, 2, 3])
def test_latent_loop_by_hand(num_steps):
  tr_input, tr_output = _hand_problem()
  dec = decoder_lib.Decoder(1, dtype="float64")
  dec.build((None, None, None, 1))
  dec.kernel.assign([[1.0, 0.0]])  # a = 1: w = z

  def decode_fn(z, i):
    del i
    return dec.weights_distribution(z).loc

  latents = tf.zeros([1, 2, 1, 1], tf.float64)
  adapted, weights, loss = inner_loops.leo_inner_loop(
      latents, tf.constant([1.0], tf.float64), decode_fn, _loss_fn(tr_input, tr_output),
      num_steps=num_steps)
  expected = [0.0, 1.0, 1.2384058440442351, 1.3934055225]
  assert adapted.numpy()[0, 0, 0, 0] == pytest.approx(expected[num_steps], abs=1e-9)
  assert adapted.numpy()[0, 1, 0, 0] == pytest.approx(-expected[num_steps], abs=1e-9)
  # The recursion, spelled out.
  z = 0.0
  for _ in range(num_steps):
    z = z + 2 * _sigmoid(-2 * z)
  assert adapted.numpy()[0, 0, 0, 0] == pytest.approx(z, abs=1e-12)
  np.testing.assert_allclose(weights.numpy()[0, :, 0, 0], [z, -z], atol=1e-12)
  # Loss at the end: each example's cross-entropy is log(1 + exp(-2 z)).
  np.testing.assert_allclose(loss.numpy(), np.full((1, 2, 1), math.log1p(math.exp(-2 * z))),
                             rtol=1e-12)


def test_latent_loop_learning_rate_and_decoder_scale():
  # a = 2, alpha = 0.25: z <- z + 2 * 0.25 * 2 sigmoid(-4 z) = z + sigmoid(-4 z); from 0: 0.5.
  tr_input, tr_output = _hand_problem()
  dec = decoder_lib.Decoder(1, dtype="float64")
  dec.build((None, None, None, 1))
  dec.kernel.assign([[2.0, 0.0]])
  adapted, _, _ = inner_loops.leo_inner_loop(
      tf.zeros([1, 2, 1, 1], tf.float64), tf.constant([0.25], tf.float64),
      lambda z, i: dec.weights_distribution(z).loc, _loss_fn(tr_input, tr_output), num_steps=2)
  z1 = 0.5
  z2 = z1 + _sigmoid(-4 * z1)  # 0.5 + sigmoid(-2) = 0.6192029
  assert adapted.numpy()[0, 0, 0, 0] == pytest.approx(z2, abs=1e-12)
  assert z2 == pytest.approx(0.6192029220, abs=1e-9)


@pytest.mark.parametrize("num_steps,expected", [(1, 0.5), (2, 0.7689414213699951),
                                                (3, 0.9457847)])
def test_finetuning_loop_by_hand(num_steps, expected):
  tr_input, tr_output = _hand_problem()
  weights = tf.zeros([1, 2, 1, 1], tf.float64)
  adapted = inner_loops.finetuning_inner_loop(weights, tf.constant([0.5], tf.float64),
                                              _loss_fn(tr_input, tr_output), num_steps=num_steps)
  w = 0.0
  for _ in range(num_steps):
    w = w + 2 * 0.5 * _sigmoid(-2 * w)
  assert w == pytest.approx(expected, abs=1e-6)
  np.testing.assert_allclose(adapted.numpy()[0, :, 0, 0], [w, -w], atol=1e-12)


def test_zero_steps_is_the_identity():
  tr_input, tr_output = _hand_problem()
  w = tf.constant([[[[0.3]], [[-0.2]]]], tf.float64)
  out = inner_loops.finetuning_inner_loop(w, tf.constant([0.5], tf.float64),
                                          _loss_fn(tr_input, tr_output), num_steps=0)
  np.testing.assert_array_equal(out.numpy(), w.numpy())


def test_first_order_stops_the_second_derivative():
  # d w_T / d eta through one step of w <- w - eta g(w) is -g(w) - eta g'(w) dw/deta ...;
  # for one step from a fixed w_0 both orders agree on d/deta, but d/dw_0 differs:
  # second order: 1 - eta g'(w_0); first order: 1.
  tr_input, tr_output = _hand_problem()
  w0 = tf.Variable([[[[0.2]], [[-0.2]]]], dtype=tf.float64)
  eta = tf.constant([0.5], tf.float64)
  grads = {}
  for first_order in (False, True):
    with tf.GradientTape() as tape:
      w1 = inner_loops.finetuning_inner_loop(w0, eta, _loss_fn(tr_input, tr_output),
                                             num_steps=1, first_order=first_order)
      target = w1[0, 0, 0, 0]
    grads[first_order] = tape.gradient(target, w0).numpy()[0, 0, 0, 0]
  # g(w_0) = dL/dw_0 = -2 sigmoid(-2 w_0) (with w_1 = -w_0 tied by the problem only
  # through the values; as free variables the class-0 weight's own curvature is
  # sum_x p(1-p) x^2 = 2 sigmoid(2 w) sigmoid(-2 w) at w_1 = -w_0).
  s = _sigmoid(-0.4)
  own_curvature = 2 * s * (1 - s)
  assert grads[True] == pytest.approx(1.0, abs=1e-12)
  assert grads[False] == pytest.approx(1.0 - 0.5 * own_curvature, abs=1e-9)
