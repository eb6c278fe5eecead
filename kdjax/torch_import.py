"""Pretrained PyTorch weights: torchvision / timm / mdistiller state dicts -> kdjax variables.

``teacher.checkpoint`` and ``student.checkpoint`` may name a state dict file of any ImageNet
model in the zoo (``docs/models.md``): a torchvision or timm ResNet-18/34/50/101, a timm
MobileNetV2/V3, ViT/DeiT, Swin-T, ConvNeXt-T, Mixer-B/16 or ResMLP-12, or mdistiller's ImageNet
MobileNetV1 (docs/design.md#teacher-checkpoints). kdjax's models mirror the reference's layers, paddings, norms and activations, so the
weights carry over exactly: ``load(path, model, input_shape)`` gives the same logits as
PyTorch's own forward pass on the same image (float32 max abs logit difference at most ~6e-6 x
the logits' standard deviation for every model, in ``tests/test_torch_import.py`` and
``tests/test_torch_import_zoo.py``; float32 rounding only).

Getting the weights (on a machine with PyTorch; kdjax itself needs only ``safetensors``):

  * timm (every model but mobilenetv1; the torchvision ResNet weights too, already as
    safetensors on the Hugging Face hub)::

      import timm, safetensors.torch
      model = timm.create_model('resnet34.tv_in1k', pretrained=True)   # or resnet18.tv_in1k,
      safetensors.torch.save_file(model.state_dict(), 'r34.safetensors')  # resnet50.tv_in1k

    (``resnet50.tv2_in1k`` / ``resnet50.a1_in1k`` etc. have the same keys and load too; so do
    ``vit_small_patch16_224.augreg_in21k_ft_in1k``, ``deit_tiny_patch16_224.fb_in1k``,
    ``swin_tiny_patch4_window7_224.ms_in1k``, ``convnext_tiny.fb_in1k``,
    ``mixer_b16_224.goog_in21k_ft_in1k``, ``resmlp_12_224.fb_in1k``,
    ``mobilenetv3_large_100.ra_in1k`` and the other pretrained tags of those names.)
  * torchvision (ResNets)::

      import torchvision, safetensors.torch
      weights = torchvision.models.ResNet34_Weights.IMAGENET1K_V1
      model = torchvision.models.resnet34(weights=weights)
      safetensors.torch.save_file(model.state_dict(), 'r34.safetensors')

    or point ``teacher.checkpoint`` at the ``.pth`` file torchvision downloaded
    (``~/.cache/torch/hub/checkpoints/resnet34-b627a593.pth``); reading ``.pth`` / ``.pt`` /
    ``.bin`` needs ``torch`` installed, ``.safetensors`` does not.
  * mdistiller's MobileNetV1: its ``.pth`` checkpoint (``{'model': state_dict}`` wrappers and
    ``module.`` prefixes are removed).

The input must be prepared as the teacher was trained: NHWC float32 RGB images scaled to
[0, 1] and normalised with the weights' mean and std (ImageNet's (0.485, 0.456, 0.406) /
(0.229, 0.224, 0.225) for most; some timm ViT/Mixer weights use 0.5 / 0.5: see the weights'
``pretrained_cfg``) with kdjax's ``preprocess.normalize(image, mean, std)``, at the resolution
the weights were trained at (224 for all the names above; a ViT's position embeddings and a
Mixer's token MLPs only fit that grid). The classifier must have as many classes as the dataset
(1000 for ImageNet-1k weights); a mismatch is reported as a shape mismatch on the head, unless
``reset_classifier`` (``student.reset_classifier``) leaves the file's classifier out for a fresh
one (fine-tuning on other classes; ``classifier_module`` names it).

The way back: ``to_state_dict(variables, model)`` maps kdjax variables of an ImageNet zoo model
onto its torch counterpart's keys and layouts (the exact inverse of the import), and
``save_state_dict(variables, model, 'r18.safetensors')`` writes them as a file that
torchvision / timm load with ``load_state_dict(strict=True)`` and kdjax reads back.

Name mapping: two layouts, chosen by the model's ``torch_layout`` (derived from the key, not a
table per architecture; one rule per family of key conventions):
  'torchvision' (the ResNets):
    torch ``a.b.<k>.c``            -> flax ``a/b/block<k>/c``  (an nn.Sequential index is a block)
    torch ``<...>.downsample.0/1`` -> flax ``<...>/downsample_conv`` / ``downsample_bn``
  'timm' (every other ImageNet model; Flax's list naming):
    torch ``blocks.3.attn.qkv``    -> flax ``blocks_3/attn/qkv``
    torch ``blocks.1.0.conv_dw``   -> flax ``blocks_1_0/conv_dw`` (numeric parts joined with _)
    torch ``stages.1.downsample.1`` -> flax ``stages_1/downsample_1``
Leaves and layouts (every layout):
  ``weight`` [O, I/g, kh, kw] (conv, depthwise too) -> ``params/.../kernel`` [kh, kw, I/g, O]
  ``weight`` [out, in] (linear, the fused qkv too)  -> ``params/.../kernel`` [in, out]
  ``weight`` [C] (BatchNorm, LayerNorm)             -> ``params/.../scale``; ``bias`` -> ``bias``
  ``running_mean`` / ``running_var``                -> ``batch_stats/.../mean`` / ``var``
  ``num_batches_tracked``                           -> ignored
  anything else (``cls_token``, ``pos_embed``, ``relative_position_bias_table``, ``gamma``,
  ``ls1``, ``alpha``, ...)                          -> ``params/.../<name>`` as is
A state dict that does not fit is reported in one line: the first missing, unexpected and
mis-shaped keys, and the model the file seems to hold (``guess_architecture``).
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


def read_state_dict(path, *, config_key='teacher.checkpoint') -> dict:
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
    raise KdjaxError(f"{config_key} '{path}' is not a file")
  if name.endswith(SAFETENSORS_SUFFIXES):
    try:
      import safetensors.numpy  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise KdjaxError(f"reading {config_key} '{path}' needs the safetensors package: "
                       'pip install safetensors') from e
    try:
      raw = safetensors.numpy.load_file(path)
    except Exception as e:  # SafetensorError on a truncated or foreign file.
      raise KdjaxError(f"{config_key} '{path}' is not a readable safetensors file "
                       f'({_first_line(e)}); re-save it with safetensors.torch.save_file('
                       'model.state_dict(), path)') from e
  elif name.endswith(TORCH_SUFFIXES):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise KdjaxError(f"reading {config_key} '{path}' needs PyTorch: pip install torch, "
                       'or convert it once to .safetensors (safetensors.torch.save_file('
                       'torch.load(path), "teacher.safetensors")) and point it '
                       'there') from e
    try:
      raw = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # Pickle errors, a pickled nn.Module, a truncated zip.
      raise KdjaxError(f"{config_key} '{path}' could not be read with torch.load("
                       f'weights_only=True) ({_first_line(e)}); save the model\'s state_dict() '
                       '(not the whole model) with torch.save or safetensors') from e
  else:
    raise KdjaxError(f"{config_key} '{path}' has an unknown suffix; a state dict file "
                     f'must end in {", ".join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}')
  state_dict = unwrap_state_dict(raw, path=path, config_key=config_key)
  return {k: _to_numpy(v) for k, v in state_dict.items()}


def unwrap_state_dict(obj, *, path='state dict', config_key='teacher.checkpoint') -> dict:
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
    raise KdjaxError(f"{config_key} '{path}' holds no state dict (a dict of tensors, "
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
# The name mapping, both ways. Two layouts: 'torchvision' (the ResNets: an nn.Sequential index is
# a ``block<k>`` module, ``downsample.0/1`` are ``downsample_conv/_bn``) and 'timm' (every other
# ImageNet model: numeric parts are joined to the name before them, Flax's list naming).

LAYOUTS = ('torchvision', 'timm')


def model_layout(model):
  """The key layout of ``model``'s torch counterpart: ``model.torch_layout`` or 'torchvision'."""
  return getattr(model, 'torch_layout', 'torchvision')


def _leaf_to_flax(path, leaf):
  if leaf == 'weight':
    return 'params', tuple(path), 'weight'
  if leaf == 'bias':
    return 'params', tuple(path) + ('bias',), None
  if leaf == 'running_mean':
    return 'batch_stats', tuple(path) + ('mean',), None
  if leaf == 'running_var':
    return 'batch_stats', tuple(path) + ('var',), None
  return 'params', tuple(path) + (leaf,), None


def torch_to_flax_key(key, layout='torchvision'):
  """``(collection, flax path tuple, transform)`` for a torch key, or None for ignored keys.

  ``transform`` is 'weight' (a ``weight``, placed by the array's rank when applying it: see
  ``_convert``) or None (as is). Any key maps to some path; one that the model lacks is then
  reported as unexpected. ``layout`` is 'torchvision' (``layer1.0.conv1`` ->
  ``layer1/block0/conv1``) or 'timm' (``blocks.1.0.conv_dw`` -> ``blocks_1_0/conv_dw``).
  """
  parts = key.split('.')
  leaf, modules = parts[-1], parts[:-1]
  if leaf in IGNORED_LEAVES:
    return None
  path = []
  if layout == 'timm':
    for part in modules:
      if part.isdigit() and path:
        path[-1] = f'{path[-1]}_{part}'
      else:
        path.append(part)
    return _leaf_to_flax(path, leaf)
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
  return _leaf_to_flax(path, leaf)


def flax_to_torch_key(collection, path, layout='torchvision'):
  """The torch key of a flax variable, e.g. ('params', ('layer1', 'block0', 'conv1',
  'kernel')) -> 'layer1.0.conv1.weight' (timm layout: ('params', ('blocks_1_0', 'conv_dw',
  'kernel')) -> 'blocks.1.0.conv_dw.weight'); the inverse of ``torch_to_flax_key``."""
  *modules, leaf = path
  parts = []
  for m in modules:
    if layout == 'timm':
      match = re.fullmatch(r'(.*?)((?:_\d+)+)', m)
      parts.append(m if match is None or not match.group(1) else
                   '.'.join([match.group(1)] + match.group(2)[1:].split('_')))
    elif m in _NAMED_CHILDREN_INV:
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


def _convert(key, array, layout='torchvision'):
  """(collection, full flax path, converted array) for one torch entry, or None if ignored.

  The layout transposes, the same for every family:
    conv ``weight`` [O, I/groups, kh, kw] -> ``kernel`` [kh, kw, I/groups, O] (a depthwise conv's
      [C, 1, kh, kw] becomes Flax's grouped [kh, kw, 1, C]);
    linear ``weight`` [out, in] -> ``kernel`` [in, out] (a fused qkv projection included: both
      frameworks order its outputs (q/k/v, head, head_dim));
    norm ``weight`` [C] -> ``scale``;
    anything else (biases, BatchNorm statistics, ``cls_token``, ``pos_embed``, Swin's
    ``relative_position_bias_table`` [(2w-1)^2, heads], ConvNeXt's ``gamma``, ResMLP's
    ``alpha``/``beta``/``ls1``/``ls2``) as is.
  """
  mapped = torch_to_flax_key(key, layout)
  if mapped is None:
    return None
  collection, path, kind = mapped
  if kind == 'weight':
    if array.ndim == 4:    # Conv2d [O, I, kh, kw] -> [kh, kw, I, O].
      return collection, path + ('kernel',), np.transpose(array, (2, 3, 1, 0))
    if array.ndim == 2:    # Linear [out, in] -> [in, out].
      return collection, path + ('kernel',), np.transpose(array)
    if array.ndim == 1:    # BatchNorm / LayerNorm weight.
      return collection, path + ('scale',), array
    return collection, path + ('kernel',), array
  return collection, path, array


# ---------------------------------------------------------------------------------------------
# torchvision's layouts of the timm-layout models: vit_b_16, swin_t, convnext_tiny and
# mobilenet_v2 are the same networks as timm's vit_base_patch16_224,
# swin_tiny_patch4_window7_224, convnext_tiny and mobilenetv2_100 under other names, so their
# state dicts are renamed to timm's first (one rule list per family). torchvision's MobileNetV3
# is not: its BatchNorm eps is 1e-3 (timm's 1e-5), so its weights do not give the same logits.

_TV_VIT = [
    (r'class_token', 'cls_token'),
    (r'conv_proj\.', 'patch_embed.proj.'),
    (r'encoder\.pos_embedding', 'pos_embed'),
    (r'encoder\.layers\.encoder_layer_(\d+)\.ln_1\.', r'blocks.\1.norm1.'),
    (r'encoder\.layers\.encoder_layer_(\d+)\.ln_2\.', r'blocks.\1.norm2.'),
    (r'encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)',
     r'blocks.\1.attn.qkv.\2'),
    (r'encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.', r'blocks.\1.attn.proj.'),
    (r'encoder\.layers\.encoder_layer_(\d+)\.mlp\.(0|linear_1)\.', r'blocks.\1.mlp.fc1.'),
    (r'encoder\.layers\.encoder_layer_(\d+)\.mlp\.(3|linear_2)\.', r'blocks.\1.mlp.fc2.'),
    (r'encoder\.ln\.', 'norm.'),
    (r'heads\.head\.', 'head.'),
]
_TV_SWIN = [  # features.0: patch embed; odd features.{2s+1}: stage s; even: its patch merging.
    (r'features\.0\.0\.', 'patch_embed.proj.'),
    (r'features\.0\.2\.', 'patch_embed.norm.'),
    (r'features\.(\d+)\.(\d+)\.mlp\.0\.',
     lambda m: f'layers.{int(m[1]) // 2}.blocks.{m[2]}.mlp.fc1.'),
    (r'features\.(\d+)\.(\d+)\.mlp\.3\.',
     lambda m: f'layers.{int(m[1]) // 2}.blocks.{m[2]}.mlp.fc2.'),
    (r'features\.(\d+)\.(\d+)\.', lambda m: f'layers.{int(m[1]) // 2}.blocks.{m[2]}.'),
    (r'features\.(\d+)\.(reduction|norm)\.',
     lambda m: f'layers.{int(m[1]) // 2}.downsample.{m[2]}.'),
    (r'head\.', 'head.fc.'),
]
_TV_CONVNEXT_BLOCK = {'0': 'conv_dw', '2': 'norm', '3': 'mlp.fc1', '5': 'mlp.fc2'}
_TV_CONVNEXT = [  # features.0: stem; odd features.{2s+1}: stage s; even: its downsampling.
    (r'features\.0\.(\d)\.', r'stem.\1.'),
    (r'features\.(\d+)\.(\d+)\.layer_scale',
     lambda m: f'stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.gamma'),
    (r'features\.(\d+)\.(\d+)\.block\.(\d)\.',
     lambda m: (f'stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.'
                f'{_TV_CONVNEXT_BLOCK.get(m[3], m[3])}.')),
    (r'features\.(\d+)\.([01])\.', lambda m: f'stages.{int(m[1]) // 2}.downsample.{m[2]}.'),
    (r'classifier\.0\.', 'head.norm.'),
    (r'classifier\.2\.', 'head.fc.'),
]
_V2_STAGES = (1, 2, 3, 4, 3, 3, 1)  # Blocks per timm stage of mobilenetv2_100.


def _v2_block(index):
  """torchvision ``features.<index>`` (1..17) -> timm ``blocks.<stage>.<j>``."""
  index -= 1
  for stage, n in enumerate(_V2_STAGES):
    if index < n:
      return f'blocks.{stage}.{index}'
    index -= n
  return f'blocks.{len(_V2_STAGES)}.{index}'


_TV_MOBILENET_V2 = [
    (r'features\.0\.0\.', 'conv_stem.'),
    (r'features\.0\.1\.', 'bn1.'),
    (r'features\.18\.0\.', 'conv_head.'),
    (r'features\.18\.1\.', 'bn2.'),
    (r'features\.1\.conv\.0\.0\.', 'blocks.0.0.conv_dw.'),
    (r'features\.1\.conv\.0\.1\.', 'blocks.0.0.bn1.'),
    (r'features\.1\.conv\.1\.', 'blocks.0.0.conv_pw.'),
    (r'features\.1\.conv\.2\.', 'blocks.0.0.bn2.'),
    (r'features\.(\d+)\.conv\.(0\.0|0\.1|1\.0|1\.1|2|3)\.', lambda m: f'{_v2_block(int(m[1]))}.' + {
        '0.0': 'conv_pw', '0.1': 'bn1', '1.0': 'conv_dw', '1.1': 'bn2', '2': 'conv_pwl',
        '3': 'bn3'}[m[2]] + '.'),
    (r'classifier\.1\.', 'classifier.'),
]
# (name, a key only that layout has, rules).
_TORCHVISION_LAYOUTS = (
    ('vit_b_16', 'encoder.pos_embedding', _TV_VIT),
    ('swin_t', 'features.0.2.weight', _TV_SWIN),
    ('convnext_tiny', 'features.1.0.layer_scale', _TV_CONVNEXT),
    ('mobilenet_v2', 'features.1.conv.0.0.weight', _TV_MOBILENET_V2),
)


def from_torchvision(state_dict):
  """``(timm-layout state dict, torchvision model name)`` for a torchvision ViT / Swin /
  ConvNeXt / MobileNetV2 state dict, or ``(state_dict, None)`` for anything else.

  Keys are renamed by the family's rules (first matching prefix rule wins); ConvNeXt's
  ``layer_scale`` [C, 1, 1] becomes ``gamma`` [C]; torchvision's ``relative_position_index``
  buffers (recomputed by kdjax) are dropped.
  """
  for name, marker, rules in _TORCHVISION_LAYOUTS:
    if marker not in state_dict:
      continue
    out = {}
    for key, value in state_dict.items():
      if key.endswith('relative_position_index'):
        continue
      new = key
      for pattern, replacement in rules:
        match = re.match(pattern, key)
        if match:
          head = replacement(match) if callable(replacement) else match.expand(replacement)
          new = head + key[match.end():]
          break
      if new.endswith('.gamma') and len(np.shape(value)) == 3:
        value = np.reshape(_to_numpy(value), (-1,))
      out[new] = value
    return out, name
  return state_dict, None


# ---------------------------------------------------------------------------------------------
# What a state dict seems to be (for error messages): the family from characteristic keys, the
# model from the family's depths and widths.

_RESNETS = {('basic', 2): 'resnet18', ('basic', 6): 'resnet34', ('bottleneck', 6): 'resnet50',
            ('bottleneck', 23): 'resnet101', ('bottleneck', 36): 'resnet152'}
_VITS = {(16, 192, 12): 'deit_tiny_patch16_224', (16, 384, 12): 'vit_small_patch16_224 or '
         'deit_small_patch16_224', (16, 768, 12): 'vit_base_patch16_224',
         (16, 1024, 24): 'vit_large_patch16_224', (32, 768, 12): 'vit_base_patch32_224'}
_SWINS = {(96, (2, 2, 6, 2)): 'swin_tiny_patch4_window7_224',
          (96, (2, 2, 18, 2)): 'swin_small_patch4_window7_224',
          (128, (2, 2, 18, 2)): 'swin_base_patch4_window7_224'}
_CONVNEXTS = {(96, (3, 3, 9, 3)): 'convnext_tiny', (96, (3, 3, 27, 3)): 'convnext_small',
              (128, (3, 3, 27, 3)): 'convnext_base'}
_MIXERS = {(768, 12): 'mixer_b16_224', (1024, 24): 'mixer_l16_224', (512, 8): 'mixer_s16_224'}
_RESMLPS = {(384, 12): 'resmlp_12_224', (384, 24): 'resmlp_24_224', (384, 36): 'resmlp_36_224',
            (768, 24): 'resmlp_big_24_224'}


def _count(keys, pattern):
  """How many distinct values the first group of ``pattern`` takes over ``keys``."""
  return len({m.group(1) for m in map(re.compile(pattern).match, keys) if m})


def _width(state_dict, key, axis=0):
  shape = np.shape(state_dict.get(key, ()))
  return shape[axis] if len(shape) > axis else None


def guess_architecture(state_dict):
  """A short description of the model a state dict seems to come from, or None.

  Looks at characteristic keys (``cls_token``: a ViT; ``relative_position_bias_table``: a
  Swin; ``mlp_tokens``: an MLP-Mixer, ...) and then at depths and widths to name the model.
  """
  keys = list(state_dict)
  has = lambda k: k in state_dict
  if has('layer1.0.conv1.weight') and has('fc.weight'):
    kind = 'bottleneck' if has('layer1.0.conv3.weight') else 'basic'
    name = _RESNETS.get((kind, _count(keys, r'layer3\.(\d+)\.')), f'a {kind}-block ResNet')
    return f'{name} (torchvision/timm ResNet)'
  if has('cls_token') and has('patch_embed.proj.weight'):
    patch = _width(state_dict, 'patch_embed.proj.weight', 3)
    width = _width(state_dict, 'cls_token', 2)
    depth = _count(keys, r'blocks\.(\d+)\.')
    name = _VITS.get((patch, width, depth), f'a ViT (patch {patch}, width {width}, depth {depth})')
    if has('dist_token'):
      name = f'a distilled DeiT (patch {patch}, width {width}, depth {depth})'
    return f'{name} (timm VisionTransformer)'
  if any(k.endswith('attn.relative_position_bias_table') for k in keys):
    if has('patch_embed.proj.weight'):
      width = _width(state_dict, 'patch_embed.proj.weight')
      depths = tuple(_count(keys, rf'layers\.{i}\.blocks\.(\d+)\.') for i in range(4))
      return (f'{_SWINS.get((width, depths), f"a Swin (width {width}, depths {depths})")} '
              '(timm SwinTransformer)')
  if has('stem.0.weight') and any('.conv_dw.' in k for k in keys) and has('head.fc.weight'):
    width = _width(state_dict, 'stem.0.weight')
    depths = tuple(_count(keys, rf'stages\.{i}\.blocks\.(\d+)\.') for i in range(4))
    return (f'{_CONVNEXTS.get((width, depths), f"a ConvNeXt (width {width}, depths {depths})")} '
            '(timm ConvNeXt)')
  if any('.mlp_tokens.' in k for k in keys):
    width = _width(state_dict, 'stem.proj.weight')
    depth = _count(keys, r'blocks\.(\d+)\.')
    return (f'{_MIXERS.get((width, depth), f"an MLP-Mixer (width {width}, depth {depth})")} '
            '(timm MlpMixer)')
  if any('.linear_tokens.' in k for k in keys):
    width = _width(state_dict, 'stem.proj.weight')
    depth = _count(keys, r'blocks\.(\d+)\.')
    return (f'{_RESMLPS.get((width, depth), f"a ResMLP (width {width}, depth {depth})")} '
            '(timm ResMLP)')
  if has('conv_stem.weight') and any(k.startswith('blocks.0.0.') for k in keys):
    if has('conv_head.bias'):
      name = 'mobilenetv3_large_100' if has('blocks.6.0.conv.weight') else (
          'mobilenetv3_small_100' if has('blocks.5.0.conv.weight') else 'a MobileNetV3')
      return f'{name} (timm MobileNetV3; width {_width(state_dict, "conv_stem.weight")} stem)'
    if has('bn2.weight'):
      name = ('mobilenetv2_100' if _width(state_dict, 'conv_head.weight') == 1280 else
              'a MobileNetV2/EfficientNet')
      return f'{name} (timm EfficientNet family)'
  if has('model.0.0.weight') and has('model.1.3.weight') and has('fc.weight'):
    return 'mobilenetv1 (mdistiller ImageNet MobileNetV1)'
  converted, name = from_torchvision(state_dict)
  if name:
    return guess_architecture(converted)
  if has('features.0.0.0.weight') or has('features.1.block.0.0.weight'):
    return 'a torchvision MobileNetV3 (not loadable: load timm\'s mobilenetv3 weights)'
  return None


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


def to_flax_variables(state_dict, model, input_shape, *, path='state dict', model_name=None,
                      config_key='teacher.checkpoint', reset_classifier=False):
  """Maps a torchvision/timm-layout state dict onto ``model``'s variables.

  Args:
    state_dict: ``{torch key: array}`` (numpy arrays or torch tensors; wrappers and
      ``module.`` prefixes are removed as in ``unwrap_state_dict``).
    model: the kdjax Flax model (e.g. ``models.get_model('resnet34', num_classes=1000)``); its
      ``torch_layout`` ('torchvision' for the ResNets, 'timm' for the other ImageNet models)
      says how keys map (``torch_to_flax_key``).
    input_shape: an NHWC input shape for ``model.init``, e.g. ``(1, 224, 224, 3)``.
    path: the file the state dict came from, for error messages.
    model_name: the model's name for error messages (default: looked up in kdjax.models).
    config_key: the config entry that named the file, for error messages.
    reset_classifier: leave out the final classifier (``classifier_module``): the file's (of
      any class count, or none) is ignored and the result lacks it, for the caller to
      initialise afresh (``student.reset_classifier``: fine-tuning on other classes).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` nested dicts of float32 numpy arrays with exactly
    the structure of ``model.init``'s variables (less the classifier with ``reset_classifier``).

  Raises:
    KdjaxError: one line naming ``path``, the model, the first few missing, unexpected
      and mis-shaped torch keys (a classifier of another class count is named as such) and,
      when the keys say so, the model the file seems to hold.
  """
  state_dict = unwrap_state_dict(state_dict, path=path, config_key=config_key)
  layout = model_layout(model)
  torchvision_name = None
  if layout == 'timm':
    state_dict, torchvision_name = from_torchvision(state_dict)
  want = abstract_variables(model, input_shape)
  head = None
  if reset_classifier:
    head = reset_head(model, want, config_key)
    want['params'] = {p: s for p, s in want['params'].items() if not _under(p, head)}
  got = {c: {} for c in want}
  unexpected, shapes = [], []
  for key, value in state_dict.items():
    value = _to_numpy(value)
    converted = _convert(key, value, layout)
    if converted is None:
      continue
    collection, flax_path, array = converted
    if head and collection == 'params' and _under(flax_path, head):
      continue  # The file's classifier, replaced by a fresh one.
    target = want.get(collection, {}).get(flax_path)
    if target is None:
      unexpected.append(key)
      continue
    if tuple(array.shape) != target:
      shapes.append(f'{key} {tuple(value.shape)} != {_torch_shape(target)}')
      continue
    got[collection][flax_path] = np.ascontiguousarray(array, dtype=np.float32)
  mismatched = {s.split(' ', 1)[0] for s in shapes}
  missing = [flax_to_torch_key(c, p, layout) for c, flat in want.items() for p in flat
             if p not in got[c]]
  missing = [k for k in missing if k not in mismatched]
  if missing or unexpected or shapes:
    missing, unexpected, shapes = (sorted(keys, key=_natural) for keys in
                                   (missing, unexpected, shapes))
    problems = []
    if missing:
      problems.append(_listing('missing', missing))
    if unexpected:
      problems.append(_listing('unexpected', unexpected))
    if shapes:
      problems.append(_listing('shape mismatch', shapes))
    hint = '' if head else _classifier_hint(state_dict, model, want, layout, config_key)
    hint += _size_hint(state_dict, model, want)
    name = model_name or _model_name(model)
    seems = guess_architecture(state_dict)
    seems = f'; the file looks like {seems}' if seems else ''
    if torchvision_name:
      seems += (f' (a torchvision {torchvision_name} state dict; its keys are named above as '
                'timm names them)')
    source = 'torchvision/timm ResNet' if layout == 'torchvision' else 'timm'
    raise KdjaxError(f"{config_key} '{path}' does not fit {name}: "
                     f'{"; ".join(problems)}{hint}{seems}; check {config_key.split(".")[0]}.model'
                     f' and that the file is a {source} state dict of the same model')
  return {c: _unflatten(flat) for c, flat in got.items()}


def load(path, model, input_shape, *, model_name=None, config_key='teacher.checkpoint',
         reset_classifier=False):
  """``read_state_dict(path)`` mapped by ``to_flax_variables``: host numpy variables."""
  return to_flax_variables(read_state_dict(path, config_key=config_key), model, input_shape,
                           path=os.fspath(path), model_name=model_name, config_key=config_key,
                           reset_classifier=reset_classifier)


def is_state_dict_file(path) -> bool:
  """Whether ``path`` names a file with a suffix ``read_state_dict`` reads."""
  path = os.fspath(path)
  return os.path.isfile(path) and path.lower().endswith(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# The inverse: kdjax variables -> a torchvision/timm state dict (to write a .safetensors file).


def to_state_dict(variables, model) -> dict:
  """Maps ``model``'s kdjax variables back to the state dict of its torch counterpart.

  The exact inverse of ``to_flax_variables`` (``to_flax_variables(to_state_dict(v, model),
  model, shape)`` gives ``v`` back bit for bit): keys as ``flax_to_torch_key`` names them in
  the model's layout (torchvision's for the ResNets, which timm's ResNets share; timm's for the
  other ImageNet models; mdistiller's for mobilenetv1), conv kernels back to [O, I/g, kh, kw],
  dense kernels to [out, in], ``scale`` to ``weight``, ``mean`` / ``var`` to ``running_mean``
  / ``running_var``, and a ``num_batches_tracked`` of 0 beside every BatchNorm's statistics
  (torch's BatchNorm state dict has one). So ``torchvision.models.resnet18()`` or
  ``timm.create_model(name)`` take it with ``load_state_dict(strict=True)``.

  Args:
    variables: ``{'params': ..., 'batch_stats': ...}`` of ``model`` (numpy or jax arrays; e.g.
      ``kdjax.load(...).variables`` or ``checkpoint.restore_student(workdir)[0]``).
    model: the kdjax model they belong to (``models.get_model(name, num_classes=...)``).

  Returns:
    ``{torch key: contiguous numpy array}``: floats as float32, ``num_batches_tracked`` int64.

  Raises:
    KdjaxError: for a model without a torch counterpart (the CIFAR zoo and the small models
      have none: only the ImageNet zoo, whose class sets ``torch_layout``, is written), a
      collection other than params / batch_stats, or a variable whose name or rank does not
      map back onto itself (it would not load; named).
  """
  layout = getattr(model, 'torch_layout', None)
  if layout not in LAYOUTS:
    raise KdjaxError(f'{_model_name(model)} has no torchvision/timm counterpart, so '
                     'to_state_dict cannot write it: only the ImageNet zoo (resnet18..101, '
                     'mobilenetv1/v2/v3, ViT/DeiT, Swin, ConvNeXt, Mixer, ResMLP) has one; save '
                     'other models with python -m kdjax.export')
  out = {}
  for (collection, path), value in _flat_variables(variables).items():
    key = flax_to_torch_key(collection, path, layout)
    array = _to_torch_layout(path, value)
    back = _convert(key, array, layout)
    if (key in out or back is None or back[:2] != (collection, path)
        or back[2].shape != value.shape):
      raise KdjaxError(f'to_state_dict cannot write {collection}/{"/".join(path)} '
                       f'{value.shape} of {_model_name(model)}: its torch key {key!r} would '
                       'load back elsewhere')
    out[key] = array
    if collection == 'batch_stats' and path[-1] == 'mean':
      out[f'{key.rsplit(".", 1)[0]}.num_batches_tracked'] = np.array(0, np.int64)
  return out


def save_state_dict(variables, model, path):
  """Writes ``to_state_dict(variables, model)`` to ``path``, a ``.safetensors`` file that
  torchvision / timm (``safetensors.torch.load_file``) and kdjax's ``teacher.checkpoint`` /
  ``student.checkpoint`` read. Returns the absolute path."""
  path = os.path.abspath(os.fspath(path))
  if not path.lower().endswith(SAFETENSORS_SUFFIXES):
    raise KdjaxError(f"save_state_dict writes .safetensors files; '{path}' has another "
                     'suffix: name it <name>.safetensors')
  try:
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise KdjaxError('save_state_dict needs the safetensors package: pip install '
                     'safetensors') from e
  state_dict = to_state_dict(variables, model)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  safetensors.numpy.save_file(state_dict, path)
  return path


def _flat_variables(variables):
  """``{(collection, path tuple): numpy array}`` of params and batch_stats (floats as float32),
  or a KdjaxError for any other collection."""
  flat = {}
  for keys, leaf in jax.tree_util.tree_leaves_with_path(dict(variables)):
    names = tuple(str(getattr(k, 'key', k)) for k in keys)
    if names[0] not in ('params', 'batch_stats'):
      raise KdjaxError(f'to_state_dict takes a network\'s params and batch_stats; got the '
                       f'collection {names[0]!r}: pass {{"params": ..., "batch_stats": ...}}')
    array = np.asarray(jax.device_get(leaf))
    if np.issubdtype(array.dtype, np.floating) or array.dtype.name == 'bfloat16':
      array = array.astype(np.float32)
    flat[names[0], names[1:]] = array
  return flat


def _to_torch_layout(path, array):
  """One flax array in torch's layout: the inverse of ``_convert``'s transposes (conv kernel
  [kh, kw, I/g, O] -> [O, I/g, kh, kw], dense kernel [in, out] -> [out, in]; others as is)."""
  if path[-1] == 'kernel' and array.ndim == 4:
    array = np.transpose(array, (3, 2, 0, 1))
  elif path[-1] == 'kernel' and array.ndim == 2:
    array = array.T
  return np.ascontiguousarray(array)


def _natural(key):
  """Sort key: numeric parts as numbers (``blocks.2`` before ``blocks.10``), so the first key
  named is the earliest in the network."""
  return [(0, int(part), '') if part.isdigit() else (1, 0, part)
          for part in re.split(r'[.\s]', key)]


def _listing(what, keys):
  more = f' and {len(keys) - _SHOW} more' if len(keys) > _SHOW else ''
  return f'{what} {keys[:_SHOW]}{more}'


def classifier_module(model) -> tuple:
  """The params path of ``model``'s final classifier: the module its ``tap_aliases()['logits']``
  names (``('head', 'fc')`` for ConvNeXt), else ``('fc',)``. What ``reset_classifier`` leaves
  out: the one module whose shape depends on the class count."""
  try:
    head = model.tap_aliases().get('logits')
  except Exception:  # pylint: disable=broad-except  A model without tap_aliases.
    head = None
  return tuple(head.split('/')) if head else ('fc',)


def _under(path, module):
  """Whether the flax variable ``path`` belongs to ``module`` (a path prefix)."""
  return tuple(path[:len(module)]) == tuple(module)


def reset_head(model, want, config_key):
  """``classifier_module(model)``, or a KdjaxError naming the flag when ``want``
  (``abstract_variables``) has no kernel there: no classifier to reset."""
  head = classifier_module(model)
  if head + ('kernel',) not in want.get('params', {}):
    network = config_key.split('.')[0]
    raise KdjaxError(f'{network}.reset_classifier=True but {network}.model '
                     f'{_model_name(model)} has no classifier kernel at '
                     f"'{'/'.join(head)}'; set --config.{network}.reset_classifier=False")
  return head


def classifier_mismatch(classes, wanted, config_key):
  """The error's hint for a classifier of another class count, with its remedy."""
  if config_key.split('.')[0] != 'student':
    remedy = ': a teacher must be trained on the dataset\'s classes'
  else:
    remedy = (': to fine-tune these weights on the dataset\'s classes, pass '
              '--config.student.reset_classifier=True')
  return (f" (the checkpoint's classifier has {classes} classes but the dataset has "
          f'{wanted}{remedy})')


def _classifier_key(model, want, layout):
  """(torch key, flax kernel path) of the model's final classifier, or (None, None)."""
  path = classifier_module(model) + ('kernel',)
  if path not in want.get('params', {}):
    return None, None
  return flax_to_torch_key('params', path, layout), path


def _classifier_hint(state_dict, model, want, layout='torchvision',
                     config_key='teacher.checkpoint'):
  """A sentence for the common case: a classifier with another number of classes."""
  key, path = _classifier_key(model, want, layout)
  fc = state_dict.get(key) if key else None
  if fc is None or len(np.shape(fc)) != 2:
    return ''
  classes, wanted = np.shape(fc)[0], want['params'][path][1]
  if classes == wanted:
    return ''
  return classifier_mismatch(classes, wanted, config_key)


def _size_hint(state_dict, model, want):
  """A sentence for a token model run at another image size than its checkpoint's."""
  pos = state_dict.get('pos_embed')
  target = want.get('params', {}).get(('pos_embed',))
  patch = getattr(model, 'patch_size', None)
  if pos is not None and target is not None and np.shape(pos) != target and patch:
    side = int(round((np.shape(pos)[1] - 1) ** 0.5))
    return (f' (the checkpoint\'s position embeddings are for {side * patch}x{side * patch} '
            'images: run the model at that size)')
  for key in ('blocks.0.mlp_tokens.fc1.weight', 'blocks.0.linear_tokens.weight'):
    tokens = state_dict.get(key)
    target = want.get('params', {}).get(torch_to_flax_key(key, 'timm')[1] + ('kernel',))
    if tokens is not None and target is not None and patch and np.shape(tokens)[-1] != target[0]:
      side = int(round(np.shape(tokens)[-1] ** 0.5))
      return (f' (the checkpoint mixes {np.shape(tokens)[-1]} tokens, i.e. {side * patch}x'
              f'{side * patch} images: run the model at that size)')
  return ''


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
