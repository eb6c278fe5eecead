"""Feature taps: named intermediate arrays of a model, read through Flax intermediates capture.

Models never return features. A tap is either a friendly alias the model defines in
`tap_aliases()` (`'layer3'`, `'layer2_pre'`, `'block7'`, `'pooled'`, `'logits'`) or a raw
`/`-joined module path in the `intermediates` collection (`'layer3/block1'`,
`'layer3/block1/preact'`, `'layer3/block1/bn2'`), torchdistill-style. A path names either a
module, whose `__call__` output is captured, or a value the model `sow`s.

Only the requested module outputs are captured; sown values XLA drops when unused.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from kdjax.errors import KdjaxError

_CALL = '__call__'


def resolve(model, name: str) -> str:
  """The intermediates path of a tap name (aliases first, raw paths as they are)."""
  return model.tap_aliases().get(name, name)


def _lookup(intermediates, path):
  node = intermediates
  for part in path.split('/'):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  if isinstance(node, dict):
    node = node.get(_CALL)
  return None if node is None else node[0]


def apply(model, variables, x, *, taps: Sequence[str] = (), train: bool = False,
          mutable=(), **kwargs):
  """Runs `model` and returns (logits, {tap: array}, updated mutable collections).

  Args:
    model: a kdjax model (has `tap_aliases()`).
    variables: its variables (`params`, `batch_stats`).
    x: the input batch.
    taps: tap names to return (aliases or raw paths).
    train: training mode (BatchNorm batch statistics).
    mutable: collections to update and return, e.g. `('batch_stats',)`.
    **kwargs: passed to `model.apply` (e.g. `rngs`).
  """
  paths = {name: resolve(model, name) for name in taps}
  wanted = frozenset(tuple(p.split('/')) for p in paths.values())
  capture = lambda mdl, method: method == _CALL and mdl.path in wanted
  mutable = (mutable,) if isinstance(mutable, str) else tuple(mutable or ())
  if taps:
    mutable += ('intermediates',)
  out = model.apply(variables, x, train=train, mutable=mutable or False,
                    capture_intermediates=capture if taps else False, **kwargs)
  logits, state = out if mutable else (out, {})
  state = dict(state)
  intermediates = state.pop('intermediates', {})
  features = {name: _lookup(intermediates, path) for name, path in paths.items()}
  return logits, features, state


def available(model, input_shape) -> list:
  """Every tap name of `model` for inputs of `input_shape` (aliases, then raw paths)."""
  def run(x):
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, mutable=['intermediates'],
                           capture_intermediates=True)
    return state['intermediates']
  tree = jax.eval_shape(run, jnp.zeros(input_shape, jnp.float32))
  paths = []

  def walk(node, prefix):
    for key, value in node.items():
      path = f'{prefix}/{key}' if prefix else key
      if key == _CALL:
        paths.append(prefix)
      elif isinstance(value, dict):
        walk(value, path)
      else:
        paths.append(path)
  walk(tree, '')
  return list(model.tap_aliases()) + sorted(p for p in paths if p)


def check(model, names: Sequence[str], input_shape, *, where: str):
  """Raises a KdjaxError naming the valid taps if any of `names` does not exist in `model`."""
  valid = available(model, input_shape)
  aliases = model.tap_aliases()
  valid_paths = set(valid)
  for name in names:
    if name not in aliases and name not in valid_paths:
      shown = ', '.join(valid[:60]) + (', ...' if len(valid) > 60 else '')
      raise KdjaxError(f"unknown tap '{name}' for model {type(model).__name__} ({where}); "
                       f'valid taps: {shown}')
