"""regression.maml: MAML's inner loop and its second-order meta-gradient, by hand."""

import numpy as np
import tensorflow as tf

from leo_tf.regression import maml as maml_lib
from leo_tf.regression import tasks as tasks_lib


def _constant_maml(alpha, steps, first_order=False):
  """A MAML whose f is the constant b2 (every other parameter 0), b2 = 0 at first."""
  model = maml_lib.MAML(maml_lib.MAMLConfig(hidden_units=(2,), inner_lr=alpha,
                                            num_inner_steps=steps, dtype="float64"),
                        first_order=first_order)
  model.init_params.assign(tf.zeros_like(model.init_params))
  return model


def test_maml_inner_loop_by_hand():
  # f = b2 (the hidden units are 0 and ReLU's gradient at 0 is 0), so one step on the
  # support MSE is b2 <- b2 - alpha * 2 (b2 - mean y). alpha = 0.25, mean y = 4:
  # 0 -> 2 -> 3 (the gap to 4 halves at each step).
  x = np.array([[[-1.0], [0.0], [1.0], [2.0]]])
  y = np.array([[[3.0], [5.0], [4.0], [4.0]]])
  tasks = tasks_lib.RegressionTasks(x, y, x, y + 1.0, y)
  for steps, want in ((1, 2.0), (2, 3.0)):
    out = _constant_maml(0.25, steps)(tasks, training=False)
    np.testing.assert_allclose(out.params.numpy()[0, 0, -1], want, rtol=1e-12)
    np.testing.assert_allclose(out.val_predictions.numpy()[0, 0, :, 0], want, rtol=1e-12)


def test_maml_meta_gradient_is_second_order():
  # Two steps: b2'' = b2 + 0.75 (mean y - b2), so d b2'' / d b2 = 0.25 through the
  # inner gradients (1 if they are stopped). Query MSE (b2'' - y_val)^2, y_val = y + 1 = 5
  # on average, at b2 = 0: b2'' = 3, dL/db2'' = 2 (3 - 5) = -4.
  x = np.array([[[-1.0], [0.0], [1.0], [2.0]]])
  y = np.array([[[3.0], [5.0], [4.0], [4.0]]])
  tasks = tasks_lib.RegressionTasks(x, y, x, y + 1.0, y)
  for first_order, factor in ((False, 0.25), (True, 1.0)):
    model = _constant_maml(0.25, 2, first_order)
    with tf.GradientTape() as tape:
      loss = model.meta_loss(model(tasks, training=True))
    grad = tape.gradient(loss.total, model.init_params).numpy()
    np.testing.assert_allclose(grad[-1], -4.0 * factor, rtol=1e-12)
