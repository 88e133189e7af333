"""leo_tf.outer.distribute: mirrored on two logical CPUs equals one device; two workers
train together; a worker lost mid-training, the job restarted, ends with the uninterrupted
run's weights; a mirrored run from the command line.

Logical devices must be configured before TensorFlow starts, so each check runs
in a fresh process.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.paths import REPO

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

# The one-device reference of one mirrored step: replica r draws its noise from
# replica_seed(seed, r, 2) for its half of the meta-batch; the mean of the replicas'
# raw meta-gradients, the fallback, clipping and Adam on one device must give the
# mirrored step's weights.
MIRRORED_CHECK = textwrap.dedent("""
    import json, sys
    from leo_tf.outer import distribute
    distribute.configure_cpu_devices(2)
    import numpy as np
    import tensorflow as tf
    from leo_tf.outer import step as outer
    from leo_tf.data import random_problems as testing
    from leo_tf.core.config import ModelConfig, OuterConfig
    from leo_tf.data.episodes import ProblemInstance
    from leo_tf.classification.leo import LEO

    config = ModelConfig(embedding_dim=16, num_latents=4, inner_unroll_length=2,
                         finetuning_unroll_length=2, dropout_rate=0.3, kl_weight=0.1)
    outer_config = OuterConfig(outer_lr=1e-2, jit_compile=True)
    problem = ProblemInstance(*[tf.constant(a) for a in testing.random_problem(8, 3, 2, 4, 16)])
    seed = tf.constant([1, 2])
    half = lambda r: ProblemInstance(*[a[4 * r:4 * r + 4] for a in problem])

    single = LEO(config, seed=0)
    single_optimizer = outer.make_optimizer(single, outer_config)
    per_replica = [outer.raw_meta_gradients(
        single, half(r), single.draw_noise(half(r), distribute.replica_seed(seed, r, 2)))
                   for r in range(2)]
    grads = [tf.add_n([g[i] for g, _ in per_replica]) / 2
             for i in range(len(single.meta_variables))]
    mean_metrics = {name: tf.add_n([m[name] for _, m in per_replica]) / 2
                    for name in per_replica[0][1]}
    grads, single_metrics = outer.finalize_gradients(single, grads, mean_metrics, outer_config)
    single_optimizer.apply_gradients(zip(grads, single.meta_variables))

    strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    with strategy.scope():
      model = LEO(config, seed=0)
      optimizer = outer.make_optimizer(model, outer_config)
    step = distribute.make_distributed_train_step(model, optimizer, outer_config, strategy)
    problems = distribute.split_for_replicas(strategy, half)
    metrics = step(problems, seed)
    differences = {v.name: float(np.max(np.abs(v.numpy() - w.numpy())))
                   for v, w in zip(single.meta_variables, model.meta_variables)}
    moved = {v.name: float(np.max(np.abs(v.numpy() - w.numpy())))
             for v, w in zip(single.meta_variables, LEO(config, seed=0).meta_variables)}
    for s in range(3):  # own draws per replica from the step seed; replicas stay in sync
      metrics = step(problems, tf.constant([0, s]))
    mirrored = [v if hasattr(v, "values") else v.value for v in model.meta_variables]
    in_sync = max(float(np.max(np.abs(v.values[0].numpy() - v.values[1].numpy())))
                  for v in mirrored)
    print(json.dumps({"differences": differences, "moved": moved, "in_sync": in_sync,
                      "loss": float(single_metrics["loss"]),
                      "finite": bool(np.isfinite(float(metrics["loss"])))}))
""")


def test_mirrored_on_two_cpus_equals_one_device():
  result = subprocess.run([sys.executable, "-c", MIRRORED_CHECK], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for name, difference in report["differences"].items():
    assert difference < 1e-6, (name, difference)
  assert min(report["moved"].values()) > 1e-4  # the step really changed every variable
  assert report["in_sync"] == 0.0
  assert report["finite"]


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  from leo_tf.data import synthetic
  path = str(tmp_path_factory.mktemp("embeddings"))
  synthetic.generate(synthetic.SyntheticConfig(
      num_train_classes=10, num_val_classes=6, num_test_classes=6, images_per_class=20,
      embedding_dim=16, signal_dim=4, nuisance_dim=4, seed=2), path, num_eval_tasks=20)
  return path


def _train_command(data_path, checkpoint_path, *extra):
  return [sys.executable, "-m", "leo_tf.train", f"--data_path={data_path}",
          "--dataset_name=synthetic", "--embedding_dim=16", "--num_latents=4",
          "--inner_unroll_length=2", "--finetuning_unroll_length=1",
          "--num_val_examples_per_class=4", "--metatrain_batch_size=4", "--num_steps_limit=6",
          "--checkpoint_steps=3", "--num_metavalid_tasks=10", "--num_metatest_tasks=10",
          f"--checkpoint_path={checkpoint_path}", "--progress=false", "--seed=1", *extra]


def _checksum(stdout):
  lines = [l for l in stdout.splitlines() if "checksum" in l]
  assert lines, stdout
  return float(lines[-1].rsplit(" ", 1)[1])


# A worker that SIGKILLs itself as it reaches step KILL_AT (before running it): a worker
# lost mid-training at a known step, between two checkpoints.
KILLED_WORKER = textwrap.dedent("""
    import os, signal, sys
    from absl import app
    from leo_tf import train
    from leo_tf.core import seeds
    from leo_tf.outer import progress
    kill_at, step_seed = int(os.environ["KILL_AT"]), seeds.step_seed
    def killing_step_seed(base_seed, step):
      if int(step) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
      return step_seed(base_seed, step)
    seeds.step_seed = killing_step_seed
    sys.argv[0] = "leo_tf.train"
    app.run(train.main, flags_parser=progress.flags_parser("leo_tf.train"))
""")


def _run_two_workers(data_path, run, kill_worker_1_at=None):
  """Runs the two-worker job on localhost; returns [(returncode, stdout, stderr)] per worker."""
  ports = _free_ports(2)
  cluster = {"worker": [f"localhost:{p}" for p in ports]}
  procs = []
  for index in range(2):
    env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster,
                                          "task": {"type": "worker", "index": index}}))
    # Without XLA: the compiled inner loops cost each worker 13 CPU seconds of this test.
    command = _train_command(data_path, run, "--strategy=multi_worker", "--jit_compile=false")
    if index == 1 and kill_worker_1_at is not None:
      env["KILL_AT"] = str(kill_worker_1_at)
      command[1:3] = ["-c", KILLED_WORKER]
    procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  results = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=400)
      results.append((proc.returncode, out, err))
  finally:
    for proc in procs:
      proc.kill()
  return results


@pytest.fixture(scope="module")
def two_worker_run(tiny_data, tmp_path_factory):
  """An uninterrupted two-worker run of 6 steps: (its folder, [(rc, stdout, stderr)])."""
  run = tmp_path_factory.mktemp("two_workers") / "run"
  return run, _run_two_workers(tiny_data, run)


def test_two_workers_on_localhost_train_together(two_worker_run):
  import tensorflow as tf
  from leo_tf.classification import experiment
  run, results = two_worker_run
  for returncode, _, err in results:
    assert returncode == 0, err[-3000:]
  outputs = [out for _, out, _ in results]
  # Both workers end with the same weights (they stayed in sync) ...
  chief, worker = _checksum(outputs[0]), _checksum(outputs[1])
  assert chief == worker
  # ... only the chief wrote checkpoints, results and summaries ...
  assert (run / "results_test.json").exists() and (run / "best" / "best.json").exists()
  assert not [p for p in os.listdir(run) if p.startswith(".scratch")]
  assert "meta-test accuracy" in outputs[0] and "meta-test accuracy" not in outputs[1]
  # ... and the chief's checkpoint restores in a single-device run with those weights.
  config = experiment.RunConfig.from_dict(json.loads((run / "config.json").read_text()))
  assert config.strategy == "multi_worker"
  model = experiment.build_learner(config)
  tf.train.Checkpoint(model=model).restore(
      tf.train.latest_checkpoint(str(run / "ckpt"))).expect_partial()
  restored = float(sum(np.abs(v.numpy().astype(np.float64)).sum()
                       for v in model.meta_variables))
  assert restored == pytest.approx(chief, rel=1e-11)  # printed with 12 digits


def test_a_lost_worker_restarted_job_ends_with_the_uninterrupted_weights(
    two_worker_run, tiny_data, tmp_path):
  import tensorflow as tf
  reference_run, reference = two_worker_run
  assert reference[0][0] == 0, reference[0][2][-3000:]
  run = tmp_path / "run"
  # Worker 1 is killed (SIGKILL) at step 5, after the chief's checkpoint of step 3.
  (chief_rc, _, chief_err), (worker_rc, _, _) = _run_two_workers(tiny_data, run,
                                                                 kill_worker_1_at=5)
  assert worker_rc == -9
  assert chief_rc == 1, chief_err[-3000:]
  assert chief_err.rstrip().splitlines()[-1].startswith(
      "leo_tf.train: error: a worker of the multi-worker job is gone (/job:worker/replica:0/"
      "task:1: UnavailableError: ")
  assert "Restart every worker with the same command" in chief_err
  assert sorted(os.listdir(run / "ckpt")) == ["checkpoint", "ckpt-3.data-00000-of-00001",
                                              "ckpt-3.index"]
  # The job started again as a cluster manager would: both workers, the same command.
  restarted = _run_two_workers(tiny_data, run)
  for returncode, _, err in restarted:
    assert returncode == 0, err[-3000:]
  assert "Resuming at step 3 of 6" in restarted[0][1]
  final = [_checksum(out) for _, out, _ in restarted]
  assert final == [_checksum(reference[0][1])] * 2
  # Every variable of the final checkpoint (model, Adam, counters) bit-identical to the
  # uninterrupted run's.
  ours = tf.train.load_checkpoint(str(run / "ckpt" / "ckpt-6"))
  theirs = tf.train.load_checkpoint(str(reference_run / "ckpt" / "ckpt-6"))
  names = [n for n in theirs.get_variable_to_shape_map() if "VARIABLE_VALUE" in n]
  assert any(n.startswith("model/") for n in names) and any("optimizer" in n for n in names)
  for name in names:
    np.testing.assert_array_equal(ours.get_tensor(name), theirs.get_tensor(name), err_msg=name)
  assert not [p for p in os.listdir(run) if p.startswith(".scratch")]


def test_mirrored_run_from_the_command_line(tiny_data, tmp_path):
  result = subprocess.run(
      _train_command(tiny_data, tmp_path / "run", "--strategy=mirrored", "--num_cpu_devices=2"),
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "meta-test accuracy" in result.stdout
  odd = subprocess.run(
      _train_command(tiny_data, tmp_path / "odd", "--strategy=mirrored", "--num_cpu_devices=3"),
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)
  assert odd.returncode != 0 and "multiple of the 3 replicas" in odd.stderr
