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


_SUBMODULES = ('checkpoint', 'harness', 'losses', 'models', 'recipes', 'torch_import', 'train')


def __getattr__(name):
  """`kdjax.load` and the submodules above import JAX only when first used: `import kdjax`
  stays light, and `kdjax.recipes.get(...)` works after a bare `import kdjax`."""
  if name == 'load':
    from kdjax.inference import load  # pylint: disable=g-import-not-at-top
    return load
  if name in _SUBMODULES:
    import importlib  # pylint: disable=g-import-not-at-top
    return importlib.import_module(f'kdjax.{name}')
  raise AttributeError(f"module 'kdjax' has no attribute {name!r}")
