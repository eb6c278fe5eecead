"""The ImageNet model zoo (kdjax.models.imagenet): parameter counts, output shapes, taps, input
sizes, compute dtype, and one jitted train step per family on a tiny variant.

Everything at 224x224 is shape-only (``jax.eval_shape``: no compute). Real compute runs on tiny
variants (a few channels and blocks, 32x32 images; constructor options, not registered names).
Weight import and logit parity with timm are in ``test_torch_import_zoo.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import taps
from kdjax import torch_import
from kdjax.errors import KdjaxError
from kdjax.models import MODELS
from kdjax.models import get_model
from kdjax.models import imagenet
from kdjax.models import common
from kdjax.models.convnext import ConvNeXt
from kdjax.models.mlp_mixer import MlpMixer
from kdjax.models.mobilenet import MobileNetV1
from kdjax.models.mobilenet import MobileNetV3
from kdjax.models.swin import SwinTransformer
from kdjax.models.vit import VisionTransformer

NAMES = sorted(imagenet.PARAM_COUNTS)
TOKEN_MODELS = ('deit_tiny_patch16_224', 'deit_small_patch16_224', 'vit_small_patch16_224',
                'vit_base_patch16_224', 'swin_tiny_patch4_window7_224', 'mixer_b16_224',
                'resmlp_12_224')

# Entries of the reference state_dict() less BatchNorm's num_batches_tracked (timm 1.0.31's
# timm.create_model(name).state_dict(); mobilenetv1: mdistiller's MobileNetV1().state_dict();
# ResNets: torchvision's, which timm's equal).
TORCH_KEYS = {
    'resnet18': 102, 'resnet34': 182, 'resnet50': 267, 'resnet101': 522, 'mobilenetv1': 137,
    'mobilenetv2_100': 262, 'mobilenetv3_large_100': 266, 'mobilenetv3_small_100': 210,
    'deit_tiny_patch16_224': 152, 'deit_small_patch16_224': 152, 'vit_small_patch16_224': 152,
    'vit_base_patch16_224': 152, 'swin_tiny_patch4_window7_224': 173, 'convnext_tiny': 182,
    'mixer_b16_224': 150, 'resmlp_12_224': 150,
}

# A few characteristic keys of each reference state dict, which the mapping must produce.
SOME_KEYS = {
    'resnet101': ['layer3.22.conv3.weight', 'layer4.0.downsample.1.running_var', 'fc.bias'],
    'mobilenetv1': ['model.0.0.weight', 'model.3.4.running_var', 'model.13.3.weight',
                    'fc.weight'],
    'mobilenetv2_100': ['conv_stem.weight', 'blocks.0.0.conv_dw.weight',
                        'blocks.6.0.conv_pwl.weight', 'conv_head.weight', 'bn2.running_mean',
                        'classifier.weight'],
    'mobilenetv3_large_100': ['blocks.2.1.se.conv_reduce.bias', 'blocks.6.0.conv.weight',
                              'blocks.6.0.bn1.running_var', 'conv_head.bias'],
    'mobilenetv3_small_100': ['blocks.0.0.se.conv_expand.weight', 'blocks.5.0.conv.weight'],
    'vit_base_patch16_224': ['cls_token', 'pos_embed', 'patch_embed.proj.weight',
                             'blocks.11.attn.qkv.weight', 'blocks.0.mlp.fc2.bias', 'norm.weight',
                             'head.weight'],
    'swin_tiny_patch4_window7_224': ['patch_embed.norm.weight',
                                     'layers.0.blocks.1.attn.relative_position_bias_table',
                                     'layers.1.downsample.reduction.weight',
                                     'layers.3.blocks.1.mlp.fc1.weight', 'head.fc.weight'],
    'convnext_tiny': ['stem.0.weight', 'stem.1.bias', 'stages.1.downsample.0.weight',
                      'stages.1.downsample.1.weight', 'stages.2.blocks.8.gamma',
                      'stages.0.blocks.0.conv_dw.weight', 'head.norm.weight', 'head.fc.weight'],
    'mixer_b16_224': ['stem.proj.weight', 'blocks.0.mlp_tokens.fc1.weight',
                      'blocks.11.mlp_channels.fc2.bias', 'norm.weight', 'head.weight'],
    'resmlp_12_224': ['blocks.0.norm1.alpha', 'blocks.0.linear_tokens.weight', 'blocks.3.ls2',
                      'norm.beta', 'head.bias'],
}


# (stage1..stage4 channels, pooled width) at 224x224 (docs/models.md#taps).
TAP_WIDTHS = {
    'resnet18': ((64, 128, 256, 512), 512), 'resnet34': ((64, 128, 256, 512), 512),
    'resnet50': ((256, 512, 1024, 2048), 2048), 'resnet101': ((256, 512, 1024, 2048), 2048),
    'mobilenetv1': ((128, 256, 512, 1024), 1024),
    'mobilenetv2_100': ((24, 32, 96, 320), 1280),
    'mobilenetv3_large_100': ((24, 40, 112, 960), 1280),
    'mobilenetv3_small_100': ((16, 24, 48, 576), 1024),
    'deit_tiny_patch16_224': ((192,) * 4, 192), 'deit_small_patch16_224': ((384,) * 4, 384),
    'vit_small_patch16_224': ((384,) * 4, 384), 'vit_base_patch16_224': ((768,) * 4, 768),
    'swin_tiny_patch4_window7_224': ((96, 192, 384, 768), 768),
    'convnext_tiny': ((96, 192, 384, 768), 768),
    'mixer_b16_224': ((768,) * 4, 768), 'resmlp_12_224': ((384,) * 4, 384),
}


def _torch_keys(model, params_tree):
  layout = torch_import.model_layout(model)
  keys = set()
  for collection, sub in params_tree.items():
    for path, _ in jax.tree_util.tree_leaves_with_path(sub):
      keys.add(torch_import.flax_to_torch_key(collection, tuple(p.key for p in path), layout))
  return keys


@pytest.mark.parametrize('name', NAMES)
def test_param_count_shapes_taps_and_torch_keys(name):
  """Parameter count = the reference's (imagenet.PARAM_COUNTS: timm 1.0.31 / torchvision /
  mdistiller, 1000 classes); float32 logits [B, 1000]; the zoo-wide taps with their shapes; and
  the torch keys the weight import expects are the reference state dict's."""
  model = get_model(name, num_classes=1000)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  assert common.param_count(variables['params']) == imagenet.PARAM_COUNTS[name]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  aliases = model.tap_aliases()
  names = ['stage1', 'stage2', 'stage3', 'stage4', 'pooled', 'logits']
  if name in TOKEN_MODELS:
    names.append('tokens')
  assert set(names) <= set(aliases)
  logits, feats = jax.eval_shape(lambda v, x: taps.apply(model, v, x, taps=names)[:2],
                                 variables, x)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  assert feats['logits'].shape == (2, 1000)
  sides = [feats[f'stage{i}'].shape[1] for i in range(1, 5)]
  for i in range(1, 5):
    assert feats[f'stage{i}'].ndim == 4 and feats[f'stage{i}'].shape[0] == 2
  if name.startswith(('deit', 'vit', 'mixer', 'resmlp')):
    assert sides == [14] * 4  # Isotropic: every stage is the 14x14 patch grid.
  else:
    assert sides == [56, 28, 14, 7]  # Strides 4, 8, 16, 32.
  channels, width = TAP_WIDTHS[name]
  assert tuple(feats[f'stage{i}'].shape[3] for i in range(1, 5)) == channels
  pooled = feats['pooled'].shape
  assert pooled == (2, width)
  if name in TOKEN_MODELS:
    tokens = feats['tokens'].shape
    assert tokens[0] == 2 and tokens[2] == feats['stage4'].shape[3] == pooled[1]
    cls = 1 if name.startswith(('deit', 'vit')) else 0
    assert tokens[1] == cls + feats['stage4'].shape[1] * feats['stage4'].shape[2]
  keys = _torch_keys(model, variables)
  assert len(keys) == TORCH_KEYS[name]
  assert set(SOME_KEYS.get(name, [])) <= keys
  layout = torch_import.model_layout(model)
  for key in SOME_KEYS.get(name, []):  # The mapping runs both ways.
    collection, path, kind = torch_import.torch_to_flax_key(key, layout)
    leaf = ('kernel',) if kind == 'weight' else ()
    assert torch_import.flax_to_torch_key(collection, path + leaf, layout) == key


def test_stage_taps_of_isotropic_models_are_quarter_depths():
  assert common.stage_blocks(12) == (2, 5, 8, 11)  # ViT-B: blocks 3, 6, 9, 12.
  assert common.stage_blocks(4) == (0, 1, 2, 3)
  assert common.stage_blocks(24) == (5, 11, 17, 23)


def test_resnet_aliases_keep_old_names_and_add_stages():
  aliases = get_model('resnet101', num_classes=1000).tap_aliases()
  for i in range(1, 5):
    assert aliases[f'stage{i}'] == aliases[f'layer{i}'] == f'layer{i}'
    assert aliases[f'stage{i}_pre'] == aliases[f'layer{i}_pre']
  assert aliases['layer3_pre'] == 'layer3/block22/preact'
  assert aliases['block32'] == 'layer4/block2' and aliases['stem'] == 'stem'
  assert aliases['pooled'] == 'pooled' and aliases['logits'] == 'fc'


def test_registered_names():
  assert set(imagenet.IMAGENET_MODELS) | {'resnet18', 'resnet34', 'resnet50'} == set(NAMES)
  assert set(NAMES) <= set(MODELS)


# ---------------------------------------------------------------------------------------------
# Input sizes.


@pytest.mark.parametrize('name,size,accepts', [
    ('vit_small_patch16_224', 100, 'multiples of 16'),
    ('deit_tiny_patch16_224', 232, 'multiples of 16'),
    ('mixer_b16_224', 120, 'multiples of 16'),
    ('swin_tiny_patch4_window7_224', 112, 'multiples of 224'),
    ('swin_tiny_patch4_window7_224', 256, 'multiples of 224'),
    ('convnext_tiny', 16, 'at least 32x32'),
])
def test_bad_image_size_is_one_line_at_setup(name, size, accepts):
  model = get_model(name, num_classes=1000)
  with pytest.raises(KdjaxError) as info:
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  message = str(info.value)
  assert '\n' not in message and name in message and accepts in message
  assert f'{size}x{size}' in message


def test_vit_builds_position_embeddings_for_its_input_grid():
  model = get_model('vit_small_patch16_224', num_classes=1000)
  for size, positions in ((224, 197), (160, 101), (384, 577)):
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                               jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    assert variables['params']['pos_embed'].shape == (1, positions, 384)
  # Swin and the CNNs take other sizes without changing their parameters.
  swin = get_model('swin_tiny_patch4_window7_224', num_classes=1000)
  out = jax.eval_shape(lambda x: swin.init_with_output(jax.random.key(0), x)[0],
                       jax.ShapeDtypeStruct((1, 448, 448, 3), jnp.float32))
  assert out.shape == (1, 1000)
  mnv3 = get_model('mobilenetv3_small_100', num_classes=1000)
  out = jax.eval_shape(lambda x: mnv3.init_with_output(jax.random.key(0), x)[0],
                       jax.ShapeDtypeStruct((1, 20, 20, 3), jnp.float32))
  assert out.shape == (1, 1000)


@pytest.mark.parametrize('name', ['vit_small_patch16_224', 'swin_tiny_patch4_window7_224',
                                  'convnext_tiny', 'mixer_b16_224', 'mobilenetv3_large_100',
                                  'mobilenetv1'])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  model = get_model(name, num_classes=1000, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  logits, feats = jax.eval_shape(
      lambda v, x: taps.apply(model, v, x, taps=['stage3'])[:2], variables, x)
  assert logits.dtype == jnp.float32 and feats['stage3'].dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------------
# Tiny variants: a real jitted train step per family.

TINY = {
    'vit': lambda: VisionTransformer(patch_size=8, embed_dim=32, depth=4, num_heads=2,
                                     num_classes=10, arch='tiny_vit'),
    'swin': lambda: SwinTransformer(patch_size=2, embed_dim=16, depths=(1, 2, 1, 1),
                                    num_heads=(1, 2, 2, 4), window_size=2, num_classes=10,
                                    arch='tiny_swin'),
    'convnext': lambda: ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=10,
                                 arch='tiny_convnext'),
    'mixer': lambda: MlpMixer(patch_size=8, embed_dim=32, num_blocks=4, num_classes=10,
                              arch='tiny_mixer'),
    'resmlp': lambda: MlpMixer(patch_size=8, embed_dim=32, num_blocks=4, mlp_ratio=(4.0, 4.0),
                               block='resmlp', num_classes=10, arch='tiny_resmlp'),
    'mobilenetv1': lambda: MobileNetV1(blocks=((16, 1), (24, 2), (32, 2), (48, 2), (64, 2)),
                                       stem_width=8, stages=(2, 3, 4, 5), num_classes=10),
    'mobilenetv2': lambda: MobileNetV3(
        table=((('ds', 3, 1, 0, 8, 'relu6', 0),),
               (('ir', 3, 2, 16, 12, 'relu6', 0), ('ir', 3, 1, 24, 12, 'relu6', 0)),
               (('ir', 3, 2, 24, 16, 'relu6', 0),), (('ir', 3, 2, 32, 24, 'relu6', 0),),
               (('ir', 3, 2, 48, 32, 'relu6', 0),)),
        stem_width=8, stem_act='relu6', head_width=64, version=2, num_classes=10),
    'mobilenetv3': lambda: MobileNetV3(
        table=((('ds', 3, 2, 0, 8, 'relu', 4),),
               (('ir', 3, 2, 16, 12, 'relu', 0), ('ir', 3, 1, 24, 12, 'relu', 0)),
               (('ir', 5, 2, 24, 16, 'hard_swish', 8),),
               (('ir', 3, 2, 32, 24, 'hard_swish', 8),), (('cn', 1, 1, 0, 48, 'hard_swish', 0),)),
        stem_width=8, head_width=64, version=3, num_classes=10),
}


def _fast_jit(fn, *args):
  """``jax.jit(fn)`` compiled for ``args`` with XLA's cheap optimisation settings: the test
  checks values, not speed, and halves its compile time so."""
  lowered = jax.jit(fn).lower(*args)
  try:
    return lowered.compile(compiler_options={'xla_backend_optimization_level': 0,
                                             'xla_llvm_disable_expensive_passes': True})
  except Exception:  # pylint: disable=broad-except  (a backend without these options)
    return lowered.compile()


def _random_variables(model, x, seed=0):
  """Variables of ``model.init``'s structure, filled on the host (compiling a real init costs
  more than the train step): weights N(0, 1/fan_in), norm scales and variances 1, biases and
  means 0."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)

  def fill(path, leaf):
    name = path[-1].key
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, np.float32)
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, np.float32)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.mark.parametrize('family', sorted(TINY))
def test_tiny_variant_jitted_train_step(family):
  model = TINY[family]()
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), jnp.float32)
  y = jnp.array([3, 7])
  variables = _random_variables(model, x)
  params = variables['params']
  state = {k: v for k, v in variables.items() if k != 'params'}

  def step(params, state):
    def loss_fn(params):
      logits, new_state = model.apply({'params': params, **state}, x, train=True,
                                      mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits,
                                                                                new_state)
    (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    return params, new_state, loss, logits, grads

  new_params, new_state, loss, logits, grads = _fast_jit(step, params, state)(params, state)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)]
  assert sum(n > 0 for n in norms) >= 0.8 * len(norms)  # Gradients reach (nearly) every leaf.
  assert any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)))
  if 'batch_stats' in state:
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(state['batch_stats']),
                   jax.tree.leaves(new_state['batch_stats'])))
  # The taps at this size: four stages, NHWC, and the documented extras.
  names = ['stage1', 'stage2', 'stage3', 'stage4', 'pooled']
  _, feats = jax.eval_shape(lambda v: taps.apply(model, v, x, taps=names)[:2],
                           {'params': new_params, **state})
  assert all(feats[f'stage{i}'].ndim == 4 for i in range(1, 5))
  sides = [feats[f'stage{i}'].shape[1] for i in range(1, 5)]
  assert sides == {'vit': [4] * 4, 'mixer': [4] * 4, 'resmlp': [4] * 4,
                   'swin': [16, 8, 4, 2]}.get(family, [8, 4, 2, 1])
  assert feats['pooled'].ndim == 2 and feats['pooled'].shape[0] == 2
