"""kdjax: knowledge distillation for image classifiers in JAX/Flax.

Import what a notebook needs from here:
  kdjax.recipes.get(name, arg)  a recipe's config by name (configs/<name>.py, also installed)
  kdjax.train.train_and_evaluate(config, workdir)   a progress bar in notebooks; returns the
                               final metrics with .history (pandas.DataFrame(result.history))
  kdjax.harness                run recipes over seeds, tabulate and plot (experiments/)
  kdjax.losses                 pure loss functions
  kdjax.models.get_model(name, num_classes=...)
  kdjax.load(path)             a trained student (export folder or workdir) that classifies raw
                               images with its run's eval preprocessing (kdjax.inference)
"""

__version__ = '0.1.0'


def __getattr__(name):
  """`kdjax.load` imports JAX and the models only when first used: `import kdjax` stays light."""
  if name == 'load':
    from kdjax.inference import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f"module 'kdjax' has no attribute {name!r}")
