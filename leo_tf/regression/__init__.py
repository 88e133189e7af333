"""Few-shot regression on sines and lines (section 4.1): LEO generating a whole MLP, and MAML.

tasks        the sines-and-lines task distribution
mlp          the base learner f_theta as a function of one flat parameter vector
leo          LEO for regression: the generator of f_theta's parameters
maml         MAML on the same tasks and the same f_theta
evaluation   sampled predictions, MSE of the mean prediction, band coverage
figure       figure 3
experiment   a regression run: train LEO and MAML (outer.fit), compare them
"""

__all__ = ["evaluation", "experiment", "figure", "leo", "maml", "mlp", "tasks"]
