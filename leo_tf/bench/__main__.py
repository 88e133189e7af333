"""`python -m leo_tf.bench`: the throughput benchmark (leo_tf.bench.throughput)."""

from absl import app

from leo_tf.bench import throughput

if __name__ == "__main__":
  app.run(throughput.main)
