"""Pretrained PyTorch teachers: torchvision / timm ResNet state dicts -> kdjax variables.

``teacher.checkpoint`` may name a state dict file of a torchvision or timm ResNet-18/34/50
(DESIGN.md §3.2). kdjax's ResNets (``kdjax/models/resnet.py``) mirror torchvision's layers,
paddings and BatchNorm settings (ALGORITHMS.md §1.10), so the weights carry over exactly:
``load(path, model, input_shape)`` gives the same logits as PyTorch's own forward pass on the
same image (float32 max abs logit difference 6e-7 / 2e-6 / 3e-6 for ResNet-18/34/50 in
``tests/test_torch_import.py``; float32 rounding only).

Getting the weights (on a machine with PyTorch; kdjax itself needs only ``safetensors``):

  * timm (the same torchvision weights, already as safetensors on the Hugging Face hub)::

      import timm, safetensors.torch
      model = timm.create_model('resnet34.tv_in1k', pretrained=True)   # or resnet18.tv_in1k,
      safetensors.torch.save_file(model.state_dict(), 'r34.safetensors')  # resnet50.tv_in1k

    (``resnet50.tv2_in1k`` / ``resnet50.a1_in1k`` etc. have the same keys and load too.)
  * torchvision::

      import torchvision, safetensors.torch
      weights = torchvision.models.ResNet34_Weights.IMAGENET1K_V1
      model = torchvision.models.resnet34(weights=weights)
      safetensors.torch.save_file(model.state_dict(), 'r34.safetensors')

    or point ``teacher.checkpoint`` at the ``.pth`` file torchvision downloaded
    (``~/.cache/torch/hub/checkpoints/resnet34-b627a593.pth``); reading ``.pth`` / ``.pt`` /
    ``.bin`` needs ``torch`` installed, ``.safetensors`` does not.

The input must be prepared as the teacher was trained: NHWC float32 RGB images scaled to
[0, 1] and normalised with the ImageNet mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225) (kdjax's ``preprocess.normalize(image, mean, std)``), at the
resolution the weights were trained at (224 for the ``tv_in1k`` weights). The classifier
must have as many classes as the dataset (1000 for ImageNet-1k weights); a mismatch is
reported as a shape mismatch on ``fc.weight``.

Name mapping (generic, derived from the key, not a table per architecture):
  torch ``a.b.<k>.c``            -> flax ``a/b/block<k>/c``  (an nn.Sequential index is a block)
  torch ``<...>.downsample.0/1`` -> flax ``<...>/downsample_conv`` / ``downsample_bn``
  ``weight`` [O, I, kh, kw] (conv)   -> ``params/.../kernel`` [kh, kw, I, O]  (OIHW -> HWIO)
  ``weight`` [out, in] (linear)      -> ``params/.../kernel`` [in, out]
  ``weight`` [C] (BatchNorm)         -> ``params/.../scale``;  ``bias`` -> ``params/.../bias``
  ``running_mean`` / ``running_var`` -> ``batch_stats/.../mean`` / ``var``
  ``num_batches_tracked``            -> ignored
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import KdjaxError

SAFETENSORS_SUFFIXES = ('.safetensors',)
TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')
# Keys under which training scripts commonly nest the model's state dict.
WRAPPER_KEYS = ('state_dict', 'model', 'model_state_dict', 'module', 'net')
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
STRIP_PREFIXES = ('module.', '_orig_mod.')
IGNORED_LEAVES = ('num_batches_tracked',)
# Sequential children with their own names in kdjax (torchvision ``downsample.0/1``).
_NAMED_CHILDREN = {'downsample': ('downsample_conv', 'downsample_bn')}
_NAMED_CHILDREN_INV = {flax: f'{torch}.{i}' for torch, names in _NAMED_CHILDREN.items()
                       for i, flax in enumerate(names)}
_SHOW = 3  # How many offending keys an error names per kind.


# ---------------------------------------------------------------------------------------------
# Reading files.


def read_state_dict(path) -> dict:
  """Reads a PyTorch state dict file into ``{torch key: numpy array}``.

  ``.safetensors`` is read with ``safetensors.numpy`` (no torch needed). ``.pth``, ``.pt``,
  ``.bin``, ``.ckpt`` and ``.tar`` are read with ``torch.load(map_location='cpu',
  weights_only=True)`` when torch is importable. Common wrappers are removed (see
  ``unwrap_state_dict``). Floating arrays are returned as float32 (half and bfloat16 files
  load too). Raises KdjaxError for a missing, unreadable or unsupported file.
  """
  path = os.fspath(path)
  name = path.lower()
  if not os.path.isfile(path):
    raise KdjaxError(f"teacher.checkpoint '{path}' is not a file")
  if name.endswith(SAFETENSORS_SUFFIXES):
    try:
      import safetensors.numpy  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise KdjaxError(f"reading teacher.checkpoint '{path}' needs the safetensors package: "
                       'pip install safetensors') from e
    try:
      raw = safetensors.numpy.load_file(path)
    except Exception as e:  # SafetensorError on a truncated or foreign file.
      raise KdjaxError(f"teacher.checkpoint '{path}' is not a readable safetensors file "
                       f'({_first_line(e)}); re-save it with safetensors.torch.save_file('
                       'model.state_dict(), path)') from e
  elif name.endswith(TORCH_SUFFIXES):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise KdjaxError(f"reading teacher.checkpoint '{path}' needs PyTorch: pip install torch, "
                       'or convert it once to .safetensors (safetensors.torch.save_file('
                       'torch.load(path), "teacher.safetensors")) and point teacher.checkpoint '
                       'there') from e
    try:
      raw = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # Pickle errors, a pickled nn.Module, a truncated zip.
      raise KdjaxError(f"teacher.checkpoint '{path}' could not be read with torch.load("
                       f'weights_only=True) ({_first_line(e)}); save the model\'s state_dict() '
                       '(not the whole model) with torch.save or safetensors') from e
  else:
    raise KdjaxError(f"teacher.checkpoint '{path}' has an unknown suffix; a state dict file "
                     f'must end in {", ".join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}')
  state_dict = unwrap_state_dict(raw, path=path)
  return {k: _to_numpy(v) for k, v in state_dict.items()}


def unwrap_state_dict(obj, *, path='state dict') -> dict:
  """Returns the flat ``{key: array}`` state dict inside ``obj``.

  Removes the wrappers training scripts add: a dict holding the state dict under one of
  ``WRAPPER_KEYS`` (``{'state_dict': ...}``, ``{'model': ...}``, ...; nested ones too), and a
  ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix shared by every key.
  Non-array entries beside the arrays (an ``epoch`` counter, say) are dropped.
  """
  for _ in range(4):
    if not isinstance(obj, dict):
      break
    if any(_is_array(v) for v in obj.values()):
      break
    inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, dict) or not any(_is_array(v) for v in obj.values()):
    raise KdjaxError(f"teacher.checkpoint '{path}' holds no state dict (a dict of tensors, "
                     f'possibly under one of {list(WRAPPER_KEYS)}); save model.state_dict()')
  state_dict = {str(k): v for k, v in obj.items() if _is_array(v)}
  changed = True
  while changed:
    changed = False
    for prefix in STRIP_PREFIXES:
      if all(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
        changed = True
  return state_dict


def _is_array(v):
  return isinstance(v, np.ndarray) or (hasattr(v, 'shape') and hasattr(v, 'dtype'))


def _to_numpy(v):
  if not isinstance(v, np.ndarray):
    if hasattr(v, 'detach'):  # A torch tensor (numpy has no bfloat16, so go through float32).
      v = v.detach().cpu()
      v = (v.float() if v.is_floating_point() else v).numpy()
    else:
      v = np.asarray(v)
  if np.issubdtype(v.dtype, np.floating) or v.dtype.name in ('bfloat16', 'float16'):
    v = v.astype(np.float32)
  return v


def _first_line(e):
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:200]}' if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# The name mapping, both ways.


def torch_to_flax_key(key):
  """``(collection, flax path tuple, transform)`` for a torch key, or None for ignored keys.

  ``transform`` is one of 'conv' (OIHW -> HWIO), 'linear' (transpose) or None, decided by
  the array's rank when applying it (see ``_convert``). Any key maps to some path; one that
  the model lacks is then reported as unexpected.
  """
  parts = key.split('.')
  leaf, modules = parts[-1], parts[:-1]
  if leaf in IGNORED_LEAVES:
    return None
  path = []
  i = 0
  while i < len(modules):
    part = modules[i]
    nxt = modules[i + 1] if i + 1 < len(modules) else None
    names = _NAMED_CHILDREN.get(part)
    if names is not None and nxt is not None and nxt.isdigit() and int(nxt) < len(names):
      path.append(names[int(nxt)])
      i += 2
      continue
    path.append(f'block{part}' if part.isdigit() else part)
    i += 1
  if leaf == 'weight':
    return 'params', tuple(path), 'weight'
  if leaf == 'bias':
    return 'params', tuple(path) + ('bias',), None
  if leaf == 'running_mean':
    return 'batch_stats', tuple(path) + ('mean',), None
  if leaf == 'running_var':
    return 'batch_stats', tuple(path) + ('var',), None
  return 'params', tuple(path) + (leaf,), None


def flax_to_torch_key(collection, path):
  """The torch key of a flax variable, e.g. ('params', ('layer1', 'block0', 'conv1',
  'kernel')) -> 'layer1.0.conv1.weight'; the inverse of ``torch_to_flax_key``."""
  *modules, leaf = path
  parts = []
  for m in modules:
    if m in _NAMED_CHILDREN_INV:
      parts.append(_NAMED_CHILDREN_INV[m])
    elif re.fullmatch(r'block\d+', m):
      parts.append(m[len('block'):])
    else:
      parts.append(m)
  if collection == 'batch_stats':
    leaf = {'mean': 'running_mean', 'var': 'running_var'}.get(leaf, leaf)
  elif leaf in ('kernel', 'scale'):
    leaf = 'weight'
  return '.'.join(parts + [leaf])


def _torch_shape(flax_shape):
  """The torch layout of a flax kernel shape (HWIO -> OIHW, [in, out] -> [out, in])."""
  if len(flax_shape) == 4:
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  if len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def _convert(key, array):
  """(collection, full flax path, converted array) for one torch entry, or None if ignored."""
  mapped = torch_to_flax_key(key)
  if mapped is None:
    return None
  collection, path, kind = mapped
  if kind == 'weight':
    if array.ndim == 4:    # Conv2d [O, I, kh, kw] -> [kh, kw, I, O].
      return collection, path + ('kernel',), np.transpose(array, (2, 3, 1, 0))
    if array.ndim == 2:    # Linear [out, in] -> [in, out].
      return collection, path + ('kernel',), np.transpose(array)
    if array.ndim == 1:    # BatchNorm weight.
      return collection, path + ('scale',), array
    return collection, path + ('kernel',), array
  return collection, path, array


# ---------------------------------------------------------------------------------------------
# Mapping onto a model.


def abstract_variables(model, input_shape):
  """``{collection: {path tuple: shape}}`` of ``model.init`` on float32 ``input_shape``."""
  tree = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                        jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  out = {}
  for collection, sub in dict(tree).items():
    flat = {}
    for p, leaf in jax.tree_util.tree_leaves_with_path(sub):
      flat[tuple(k.key for k in p)] = tuple(leaf.shape)
    out[collection] = flat
  return out


def to_flax_variables(state_dict, model, input_shape, *, path='state dict', model_name=None):
  """Maps a torchvision/timm-layout state dict onto ``model``'s variables.

  Args:
    state_dict: ``{torch key: array}`` (numpy arrays or torch tensors; wrappers and
      ``module.`` prefixes are removed as in ``unwrap_state_dict``).
    model: the kdjax Flax model (e.g. ``models.get_model('resnet34', num_classes=1000)``).
    input_shape: an NHWC input shape for ``model.init``, e.g. ``(1, 224, 224, 3)``.
    path: the file the state dict came from, for error messages.
    model_name: the model's name for error messages (default: looked up in kdjax.models).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` nested dicts of float32 numpy arrays with exactly
    the structure of ``model.init``'s variables.

  Raises:
    KdjaxError: one line naming ``path``, the model and the first few missing, unexpected
      and mis-shaped torch keys (a classifier of another class count is named as such).
  """
  state_dict = unwrap_state_dict(state_dict, path=path)
  want = abstract_variables(model, input_shape)
  got = {c: {} for c in want}
  unexpected, shapes = [], []
  for key, value in state_dict.items():
    value = _to_numpy(value)
    converted = _convert(key, value)
    if converted is None:
      continue
    collection, flax_path, array = converted
    target = want.get(collection, {}).get(flax_path)
    if target is None:
      unexpected.append(key)
      continue
    if tuple(array.shape) != target:
      shapes.append(f'{key} {tuple(value.shape)} != {_torch_shape(target)}')
      continue
    got[collection][flax_path] = np.ascontiguousarray(array, dtype=np.float32)
  mismatched = {s.split(' ', 1)[0] for s in shapes}
  missing = [flax_to_torch_key(c, p) for c, flat in want.items() for p in flat
             if p not in got[c]]
  missing = [k for k in missing if k not in mismatched]
  if missing or unexpected or shapes:
    unexpected, shapes = sorted(unexpected), sorted(shapes)
    problems = []
    if missing:
      problems.append(_listing('missing', missing))
    if unexpected:
      problems.append(_listing('unexpected', unexpected))
    if shapes:
      problems.append(_listing('shape mismatch', shapes))
    hint = _classifier_hint(state_dict, model, want)
    name = model_name or _model_name(model)
    raise KdjaxError(f"teacher.checkpoint '{path}' does not fit {name}: "
                     f'{"; ".join(problems)}{hint}; check teacher.model and that the file is a '
                     'torchvision/timm ResNet state dict of the same depth')
  return {c: _unflatten(flat) for c, flat in got.items()}


def load(path, model, input_shape, *, model_name=None):
  """``read_state_dict(path)`` mapped by ``to_flax_variables``: host numpy variables."""
  return to_flax_variables(read_state_dict(path), model, input_shape, path=os.fspath(path),
                           model_name=model_name)


def is_state_dict_file(path) -> bool:
  """Whether ``path`` names a file with a suffix ``read_state_dict`` reads."""
  path = os.fspath(path)
  return os.path.isfile(path) and path.lower().endswith(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)


def _listing(what, keys):
  more = f' and {len(keys) - _SHOW} more' if len(keys) > _SHOW else ''
  return f'{what} {keys[:_SHOW]}{more}'


def _classifier_hint(state_dict, model, want):
  """A sentence for the common case: a classifier with another number of classes."""
  fc = state_dict.get('fc.weight')
  target = want.get('params', {}).get(('fc', 'kernel'))
  if fc is None or target is None or len(np.shape(fc)) != 2:
    return ''
  classes, wanted = np.shape(fc)[0], target[1]
  if classes == wanted:
    return ''
  return (f' (the checkpoint\'s classifier has {classes} classes but the dataset has '
          f'{wanted}: a teacher must be trained on the dataset\'s classes)')


def _model_name(model):
  from kdjax import models  # pylint: disable=g-import-not-at-top
  num_classes = getattr(model, 'num_classes', None)
  for name, build in models.MODELS.items():
    try:
      if build(num_classes=num_classes, dtype=model.dtype) == model:
        return name
    except Exception:  # pylint: disable=broad-except
      continue
  return type(model).__name__


def _unflatten(flat):
  tree = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree
