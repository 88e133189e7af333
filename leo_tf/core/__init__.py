"""The parts of LEO, one module per component of the paper (section 2.3).

config         frozen configurations of the model, the data and the outer loop
seeds          stateless seeds and dropout masks
distributions  the diagonal Gaussians over codes and weights, the KL
encoder        g_e and the relation network g_r
decoder        g_d and its orthogonality penalty
classifier     the base learner f_theta: logits, cross-entropy, accuracy
inner_loops    latent adaptation and fine-tuning (pure functions)
objective      equations 6 and 7
statistics     the 95% confidence interval every reported number uses
"""

__all__ = ["classifier", "config", "decoder", "distributions", "encoder", "inner_loops",
           "objective", "seeds", "statistics"]
