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

import os as _os

__version__ = '0.1.0'

# XLA:CPU options kdjax sets by default, before JAX creates its CPU backend (so: when `import
# kdjax` comes before JAX's first computation, as in every kdjax command). Measured on this
# project's CPU (docs/design.md#speed): with jaxlib 0.10, routing convolutions and dots through
# YNNPACK fusions (XLA:CPU's default) made a ResNet-18 train step 14% and a ResNet-34 forward
# 30% slower than XLA's own convolutions. Applied only to the jaxlib versions where that was
# measured (an unknown flag would stop XLA), never over a value already in XLA_FLAGS, and not
# at all with KDJAX_XLA_DEFAULTS=0. GPU and TPU backends ignore XLA:CPU options.
CPU_XLA_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': ''}
CPU_XLA_FLAGS_JAXLIB = ('0.10.',)


def _set_cpu_xla_flags():
  if _os.environ.get('KDJAX_XLA_DEFAULTS', '1') == '0':
    return
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    jaxlib = metadata.version('jaxlib')
  except Exception:  # pylint: disable=broad-except  no jaxlib: nothing to configure
    return
  if not jaxlib.startswith(CPU_XLA_FLAGS_JAXLIB):
    return
  flags = _os.environ.get('XLA_FLAGS', '')
  extra = [f'--{k}={v}' for k, v in CPU_XLA_FLAGS.items() if k not in flags]
  if extra:
    _os.environ['XLA_FLAGS'] = ' '.join([flags] + extra).strip()


_set_cpu_xla_flags()


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
