"""Weight import for the ImageNet zoo: timm (and torchvision / mdistiller) state dicts -> kdjax.

The numpy tests always run (they need only ``safetensors``): the key mapping of every family
places and transposes every array, and a state dict of another architecture or image size is
named in one line. The parity tests compare kdjax's logits with timm's own forward pass (random
init, non-trivial BatchNorm statistics, 224x224, float32; max |diff| <= 1e-4 x std(logits)) and
run only where torch and timm are installed (``pip install kdjax[torch]``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models
from kdjax import torch_import
from kdjax.errors import KdjaxError

from test_models_imagenet import TINY

safetensors_numpy = pytest.importorskip('safetensors.numpy')


def fake_state_dict(model, input_shape, seed=0):
  """A torch-layout state dict with random values, derived from ``model``'s variables."""
  rng = np.random.default_rng(seed)
  layout = torch_import.model_layout(model)
  state_dict = {}
  for collection, flat in torch_import.abstract_variables(model, input_shape).items():
    for path, shape in flat.items():
      key = torch_import.flax_to_torch_key(collection, path, layout)
      torch_shape = torch_import._torch_shape(shape) if path[-1] == 'kernel' else shape
      values = rng.standard_normal(torch_shape).astype(np.float32)
      if path[-1] == 'var':
        values = np.abs(values) + 0.5
      state_dict[key] = values
      if path[-1] == 'mean':
        state_dict[key.replace('running_mean', 'num_batches_tracked')] = np.array(7, np.int64)
  return state_dict


def _to_flax_layout(key, array):
  """What the import must make of a torch array: conv OIHW -> HWIO, linear transposed."""
  if key.endswith('.weight') and array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if key.endswith('.weight') and array.ndim == 2:
    return array.T
  return array


@pytest.mark.parametrize('family', sorted(TINY))
def test_every_family_places_and_transposes_every_array(family, tmp_path):
  model = TINY[family]()
  shape = (1, 32, 32, 3)
  state_dict = fake_state_dict(model, shape)
  path = str(tmp_path / f'{family}.safetensors')
  safetensors_numpy.save_file(state_dict, path)
  variables = torch_import.load(path, model, shape)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct(shape, jnp.float32))
  assert jax.tree.structure(abstract) == jax.tree.structure(variables)
  layout = torch_import.model_layout(model)
  for keys, got in jax.tree_util.tree_leaves_with_path(variables):
    keys = tuple(k.key for k in keys)
    key = torch_import.flax_to_torch_key(keys[0], keys[1:], layout)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _to_flax_layout(key, state_dict[key]))
  out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
  assert out.shape == (1, 10)  # Usable as is.


def _abstract_state_dict(name, size=224):
  """{torch key: zeros of the torch shape} for a registered model (lazily allocated)."""
  model = models.get_model(name, num_classes=1000)
  layout = torch_import.model_layout(model)
  out = {}
  for collection, flat in torch_import.abstract_variables(model, (1, size, size, 3)).items():
    for path, shape in flat.items():
      shape = torch_import._torch_shape(shape) if path[-1] == 'kernel' else shape
      out[torch_import.flax_to_torch_key(collection, path, layout)] = np.zeros(shape, np.float32)
  return out


@pytest.mark.parametrize('name', ['resnet101', 'mobilenetv1', 'mobilenetv2_100',
                                  'mobilenetv3_large_100', 'mobilenetv3_small_100',
                                  'deit_tiny_patch16_224', 'vit_base_patch16_224',
                                  'swin_tiny_patch4_window7_224', 'convnext_tiny',
                                  'mixer_b16_224', 'resmlp_12_224'])
def test_guess_architecture_names_the_model(name):
  assert name in torch_import.guess_architecture(_abstract_state_dict(name))


@pytest.mark.parametrize('marker,renames', [
    ('encoder.pos_embedding', {
        'class_token': 'cls_token', 'conv_proj.weight': 'patch_embed.proj.weight',
        'encoder.pos_embedding': 'pos_embed',
        'encoder.layers.encoder_layer_11.self_attention.in_proj_weight':
            'blocks.11.attn.qkv.weight',
        'encoder.layers.encoder_layer_0.self_attention.out_proj.bias': 'blocks.0.attn.proj.bias',
        'encoder.layers.encoder_layer_3.mlp.3.weight': 'blocks.3.mlp.fc2.weight',
        'encoder.layers.encoder_layer_3.ln_2.bias': 'blocks.3.norm2.bias',
        'encoder.ln.weight': 'norm.weight', 'heads.head.bias': 'head.bias'}),
    ('features.0.2.weight', {
        'features.0.0.weight': 'patch_embed.proj.weight',
        'features.0.2.weight': 'patch_embed.norm.weight',
        'features.5.4.attn.relative_position_bias_table':
            'layers.2.blocks.4.attn.relative_position_bias_table',
        'features.7.1.mlp.0.bias': 'layers.3.blocks.1.mlp.fc1.bias',
        'features.6.reduction.weight': 'layers.3.downsample.reduction.weight',
        'head.weight': 'head.fc.weight', 'norm.bias': 'norm.bias'}),
    ('features.1.0.layer_scale', {
        'features.0.1.bias': 'stem.1.bias', 'features.1.0.layer_scale': 'stages.0.blocks.0.gamma',
        'features.5.8.block.0.weight': 'stages.2.blocks.8.conv_dw.weight',
        'features.7.2.block.5.bias': 'stages.3.blocks.2.mlp.fc2.bias',
        'features.4.1.weight': 'stages.2.downsample.1.weight',
        'classifier.0.weight': 'head.norm.weight', 'classifier.2.weight': 'head.fc.weight'}),
    ('features.1.conv.0.0.weight', {
        'features.0.1.running_var': 'bn1.running_var',
        'features.1.conv.1.weight': 'blocks.0.0.conv_pw.weight',
        'features.2.conv.0.0.weight': 'blocks.1.0.conv_pw.weight',
        'features.7.conv.1.1.bias': 'blocks.3.0.bn2.bias',
        'features.17.conv.2.weight': 'blocks.6.0.conv_pwl.weight',
        'features.18.1.weight': 'bn2.weight', 'classifier.1.bias': 'classifier.bias'}),
])
def test_torchvision_keys_are_renamed_to_timm(marker, renames):
  state_dict = {k: np.zeros((2, 1, 1) if k.endswith('layer_scale') else (2,), np.float32)
                for k in list(renames) + [marker]}
  state_dict['features.1.0.attn.relative_position_index'] = np.zeros((4, 4), np.int64)
  converted, name = torch_import.from_torchvision(state_dict)
  assert name is not None
  for old, new in renames.items():
    assert new in converted, (old, new)
  assert not any(k.endswith('relative_position_index') for k in converted)
  if 'stages.0.blocks.0.gamma' in converted:
    assert converted['stages.0.blocks.0.gamma'].shape == (2,)
  assert torch_import.from_torchvision({'fc.weight': np.zeros(2)})[1] is None


def _error(state_dict, name, tmp_path, size=224, num_classes=1000):
  path = str(tmp_path / 'other.safetensors')
  safetensors_numpy.save_file(state_dict, path)
  model = models.get_model(name, num_classes=num_classes)
  with pytest.raises(KdjaxError) as info:
    torch_import.load(path, model, (1, size, size, 3))
  message = str(info.value)
  assert '\n' not in message and path in message and f'does not fit {name}:' in message
  return message


@pytest.mark.parametrize('source,target,first', [
    ('deit_tiny_patch16_224', 'swin_tiny_patch4_window7_224', "missing ['head.fc.bias'"),
    ('resnet18', 'convnext_tiny', "missing ['head.fc.bias'"),
    ('mobilenetv3_small_100', 'mobilenetv3_large_100', "missing ['blocks.3.2.bn1.bias'"),
    ('resmlp_12_224', 'mixer_b16_224', "missing ['blocks.0.mlp_tokens.fc1.bias'"),
    ('convnext_tiny', 'resnet50', "missing ['bn1.bias'"),
])
def test_state_dict_of_another_architecture_is_named(source, target, first, tmp_path):
  message = _error(_abstract_state_dict(source), target, tmp_path)
  assert first in message
  assert f'the file looks like {source}' in message


def test_vit_at_another_size_says_which_size_the_checkpoint_wants(tmp_path):
  message = _error(_abstract_state_dict('deit_tiny_patch16_224'), 'deit_tiny_patch16_224',
                   tmp_path, size=160)
  assert 'shape mismatch' in message and 'pos_embed (1, 197, 192) != (1, 101, 192)' in message
  assert 'position embeddings are for 224x224 images' in message


def test_mixer_at_another_size_says_which_size_the_checkpoint_wants(tmp_path):
  message = _error(_abstract_state_dict('resmlp_12_224'), 'resmlp_12_224', tmp_path, size=160)
  assert 'blocks.0.linear_tokens.weight (196, 196) != (100, 100)' in message
  assert 'mixes 196 tokens, i.e. 224x224 images' in message


def test_timm_classifier_of_another_class_count_is_named(tmp_path):
  message = _error(_abstract_state_dict('convnext_tiny'), 'convnext_tiny', tmp_path,
                   num_classes=10)
  assert 'head.fc.weight (1000, 768) != (10, 768)' in message
  assert '1000 classes but the dataset has 10' in message


def test_student_checkpoint_key_in_messages(tmp_path):
  with pytest.raises(KdjaxError, match="student.checkpoint '.*' is not a file"):
    torch_import.read_state_dict(str(tmp_path / 'absent.safetensors'),
                                 config_key='student.checkpoint')


# ---------------------------------------------------------------------------------------------
# Parity with timm's (torchvision's, mdistiller's) forward pass: needs torch and timm.

def _mdistiller_mobilenetv1(torch):
  """mdistiller's ImageNet MobileNetV1 (mdistiller/models/imagenet/mobilenetv1.py) restated:
  ``model`` = conv-BN-ReLU, 13 x (dw conv-BN-ReLU, 1x1 conv-BN-ReLU), AvgPool2d(7); ``fc``."""
  nn = torch.nn

  def conv_bn(inp, out, stride):
    return nn.Sequential(nn.Conv2d(inp, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out),
                         nn.ReLU(inplace=True))

  def conv_dw(inp, out, stride):
    return nn.Sequential(nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                         nn.BatchNorm2d(inp), nn.ReLU(inplace=True),
                         nn.Conv2d(inp, out, 1, 1, 0, bias=False), nn.BatchNorm2d(out),
                         nn.ReLU(inplace=True))

  class MobileNetV1(nn.Module):

    def __init__(self):
      super().__init__()
      widths = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
                (256, 512, 2)] + [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
      self.model = nn.Sequential(conv_bn(3, 32, 2), *[conv_dw(*w) for w in widths],
                                 nn.AvgPool2d(7))
      self.fc = nn.Linear(1024, 1000)

    def forward(self, x):
      return self.fc(self.model(x).reshape(-1, 1024))

  return MobileNetV1()


def _reference(name, torch, torchvision_name=None):
  if torchvision_name:
    torchvision = pytest.importorskip('torchvision')
    return getattr(torchvision.models, torchvision_name)(weights=None, num_classes=1000)
  if name == 'mobilenetv1':
    return _mdistiller_mobilenetv1(torch)
  timm = pytest.importorskip('timm')
  return timm.create_model(name, pretrained=False, num_classes=1000)


def _randomise(net, torch):
  """Non-trivial statistics and affine parameters where timm initialises to (near) identity:
  BatchNorm running stats, norm affines, layer scales (ConvNeXt 1e-6, ResMLP 1e-4), Swin's
  bias tables, the zero-initialised Mixer/ResMLP heads; ResNet blocks' last BN scaled down so
  the logits stay O(1) through 33 blocks."""
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
      elif isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    for key, param in net.named_parameters():
      leaf = key.rsplit('.', 1)[-1]
      if leaf in ('gamma', 'ls1', 'ls2'):
        param.uniform_(0.2, 1.0)
      elif leaf == 'alpha':
        param.uniform_(0.5, 1.5)
      elif leaf == 'beta':
        param.uniform_(-0.5, 0.5)
      elif leaf == 'layer_scale':  # torchvision's ConvNeXt gamma.
        param.uniform_(0.2, 1.0)
      elif leaf == 'relative_position_bias_table':
        param.normal_(0.0, 0.5)
      elif key.endswith('head.weight') and float(param.abs().max()) == 0.0:  # +torchvision ViT
        param.normal_(0.0, 0.02)
    for layer in [getattr(net, f'layer{i}', ()) for i in range(1, 5)]:
      for block in layer:  # Small last-BN scales as in trained ResNets: realistic logits.
        getattr(block, 'bn3', block.bn2).weight.uniform_(0.2, 0.8)
  return net.eval()


def _parity(name, tmp_path, *, save_as='safetensors', torchvision_name=None):
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  net = _randomise(_reference(name, torch, torchvision_name), torch)
  state_dict = net.state_dict()
  if save_as == 'safetensors':
    import safetensors.torch  # pylint: disable=g-import-not-at-top
    path = str(tmp_path / f'{name}.safetensors')
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
  else:
    path = str(tmp_path / f'{name}.pth')
    torch.save({'model': state_dict, 'epoch': 300}, path)
  x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)  # NCHW
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  model = models.get_model(name, num_classes=1000)
  variables = torch_import.load(path, model, (1, 224, 224, 3))
  got = np.asarray(jax.jit(model.apply)(variables, np.transpose(x, (0, 2, 3, 1))))  # NHWC
  diff = float(np.max(np.abs(got - want)))
  std = float(want.std())
  print(f'{name} ({save_as}{", torchvision " + torchvision_name if torchvision_name else ""}): '
        f'max |logit diff| vs reference {diff:.3g}, logits std {std:.3g}, '
        f'ratio {diff / std:.3g}')
  assert got.shape == want.shape == (2, 1000)
  assert std > 1e-3
  assert diff <= 1e-4 * std
  return diff


# Each takes 2-15 s on 2 CPU cores (timm init, torch forward, kdjax load + compile + forward):
# none is marked slow.
NAMES = ['mobilenetv1', 'mobilenetv2_100', 'mobilenetv3_large_100', 'mobilenetv3_small_100',
         'deit_tiny_patch16_224', 'deit_small_patch16_224', 'vit_small_patch16_224',
         'vit_base_patch16_224', 'swin_tiny_patch4_window7_224', 'convnext_tiny',
         'mixer_b16_224', 'resmlp_12_224', 'resnet50', 'resnet101']


@pytest.mark.parametrize('name', NAMES)
def test_logits_match_timm(name, tmp_path):
  _parity(name, tmp_path)


@pytest.mark.parametrize('torchvision_name,name', [
    ('mobilenet_v2', 'mobilenetv2_100'),
    ('convnext_tiny', 'convnext_tiny'),
    ('swin_t', 'swin_tiny_patch4_window7_224'),
    ('vit_b_16', 'vit_base_patch16_224'),
    ('resnet101', 'resnet101'),
])
def test_torchvision_state_dicts_match_torchvision(torchvision_name, name, tmp_path):
  """torchvision's twins of timm models load too (keys renamed by from_torchvision)."""
  _parity(name, tmp_path, torchvision_name=torchvision_name)


def test_pth_with_wrapper_matches_timm(tmp_path):
  _parity('deit_tiny_patch16_224', tmp_path, save_as='pth')


def test_real_timm_state_dict_of_another_model_is_named(tmp_path):
  pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  state_dict = {k: v.numpy() for k, v in timm.create_model('resmlp_12_224').state_dict().items()}
  message = _error(state_dict, 'deit_tiny_patch16_224', tmp_path)
  assert 'the file looks like resmlp_12_224 (timm ResMLP)' in message
