"""kdjax: knowledge distillation for image classifiers in JAX/Flax.

Import what a notebook needs from here:
  kdjax.losses                 pure loss functions
  kdjax.train.train_and_evaluate(config, workdir)
  kdjax.models.get_model(name, num_classes=...)
"""

__version__ = '0.1.0'
