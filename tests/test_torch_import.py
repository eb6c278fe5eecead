"""Pretrained teacher import: torchvision/timm ResNet state dicts -> kdjax variables.

The numpy tests always run (they need only `safetensors`). The parity tests compare kdjax's
logits with PyTorch's own forward pass and run only where torch and torchvision are installed.
"""

import jax
import numpy as np
import pytest

from kdjax import models
from kdjax import torch_import
from kdjax.errors import KdjaxError

safetensors_numpy = pytest.importorskip('safetensors.numpy')

SHAPE = (1, 32, 32, 3)


def fake_state_dict(model, input_shape=SHAPE, seed=0):
  """A torchvision-layout state dict with random values, derived from `model`'s variables."""
  rng = np.random.default_rng(seed)
  state_dict = {}
  for collection, flat in torch_import.abstract_variables(model, input_shape).items():
    for path, shape in flat.items():
      key = torch_import.flax_to_torch_key(collection, path)
      torch_shape = torch_import._torch_shape(shape) if path[-1] == 'kernel' else shape
      values = rng.standard_normal(torch_shape).astype(np.float32)
      if path[-1] == 'var':
        values = np.abs(values) + 0.5
      state_dict[key] = values
      if path[-1] == 'mean':
        state_dict[key.replace('running_mean', 'num_batches_tracked')] = np.array(7, np.int64)
  return state_dict


@pytest.fixture(scope='module')
def r18():
  return models.get_model('resnet18', num_classes=10)


@pytest.fixture(scope='module')
def r18_file(r18, tmp_path_factory):
  state_dict = fake_state_dict(r18)
  path = str(tmp_path_factory.mktemp('r18') / 'r18.safetensors')
  safetensors_numpy.save_file(state_dict, path)
  return path, state_dict


@pytest.mark.parametrize('name', ['resnet18', 'resnet34', 'resnet50'])
def test_key_mapping_round_trips_and_matches_torchvision_names(name):
  model = models.get_model(name, num_classes=1000)
  flat = torch_import.abstract_variables(model, SHAPE)
  keys = set()
  for collection, leaves in flat.items():
    for path in leaves:
      key = torch_import.flax_to_torch_key(collection, path)
      mapped = torch_import.torch_to_flax_key(key)
      if mapped[2] == 'weight':
        assert path[-1] in ('kernel', 'scale') and mapped[1] == path[:-1]
      else:
        assert mapped[:2] == (collection, path)
      keys.add(key)
  # torchvision's names (state_dict() less num_batches_tracked).
  for key in ['conv1.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var',
              'layer1.0.conv1.weight', 'layer2.0.downsample.0.weight',
              'layer2.0.downsample.1.running_var', 'layer4.1.bn2.weight', 'fc.weight', 'fc.bias']:
    assert key in keys
  num_bn = sum(k.endswith('running_mean') for k in keys)
  assert num_bn == {'resnet18': 20, 'resnet34': 36, 'resnet50': 53}[name]
  assert torch_import.torch_to_flax_key('layer1.0.bn1.num_batches_tracked') is None


def test_load_places_and_transposes_every_array(r18, r18_file):
  path, state_dict = r18_file
  variables = torch_import.load(path, r18, SHAPE)
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(params['conv1']['kernel'],
                                np.transpose(state_dict['conv1.weight'], (2, 3, 1, 0)))
  assert params['conv1']['kernel'].shape == (7, 7, 3, 64)
  np.testing.assert_array_equal(params['fc']['kernel'], state_dict['fc.weight'].T)
  np.testing.assert_array_equal(params['fc']['bias'], state_dict['fc.bias'])
  np.testing.assert_array_equal(params['bn1']['scale'], state_dict['bn1.weight'])
  np.testing.assert_array_equal(params['bn1']['bias'], state_dict['bn1.bias'])
  np.testing.assert_array_equal(stats['bn1']['mean'], state_dict['bn1.running_mean'])
  np.testing.assert_array_equal(stats['bn1']['var'], state_dict['bn1.running_var'])
  block = params['layer2']['block0']
  np.testing.assert_array_equal(block['conv2']['kernel'],
                                np.transpose(state_dict['layer2.0.conv2.weight'], (2, 3, 1, 0)))
  np.testing.assert_array_equal(block['downsample_conv']['kernel'],
                                np.transpose(state_dict['layer2.0.downsample.0.weight'],
                                             (2, 3, 1, 0)))
  np.testing.assert_array_equal(block['downsample_bn']['scale'],
                                state_dict['layer2.0.downsample.1.weight'])
  np.testing.assert_array_equal(stats['layer2']['block0']['downsample_bn']['var'],
                                state_dict['layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(stats['layer4']['block1']['bn2']['mean'],
                                state_dict['layer4.1.bn2.running_mean'])
  # Every leaf, the same tree as model.init, float32 numpy.
  abstract = jax.eval_shape(lambda x: r18.init(jax.random.key(0), x), np.zeros(SHAPE, np.float32))
  assert jax.tree.structure(abstract) == jax.tree.structure(variables)
  for want, got in zip(jax.tree.leaves(abstract), jax.tree.leaves(variables)):
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == want.shape
  for path, got in jax.tree_util.tree_leaves_with_path(variables):
    keys = tuple(k.key for k in path)
    want = state_dict[torch_import.flax_to_torch_key(keys[0], keys[1:])]
    if keys[-1] == 'kernel':
      want = np.transpose(want, (2, 3, 1, 0)) if want.ndim == 4 else want.T
    np.testing.assert_array_equal(got, want)
  r18.apply(variables, np.zeros(SHAPE, np.float32))  # Usable as is.


def _error(state_dict, model, tmp_path, name='bad.safetensors'):
  path = str(tmp_path / name)
  safetensors_numpy.save_file(state_dict, path)
  with pytest.raises(KdjaxError) as info:
    torch_import.load(path, model, SHAPE)
  message = str(info.value)
  assert '\n' not in message and path in message and 'resnet18' in message
  return message


def test_missing_key_is_named(r18, r18_file, tmp_path):
  state_dict = dict(r18_file[1])
  del state_dict['layer4.1.bn2.weight']
  del state_dict['layer3.0.downsample.1.running_var']
  message = _error(state_dict, r18, tmp_path)
  assert 'missing' in message and "'layer4.1.bn2.weight'" in message
  assert "'layer3.0.downsample.1.running_var'" in message
  assert 'unexpected' not in message and 'shape mismatch' not in message


def test_unexpected_key_is_named(r18, r18_file, tmp_path):
  state_dict = dict(r18_file[1])
  state_dict['layer4.2.conv1.weight'] = np.zeros((512, 512, 3, 3), np.float32)
  state_dict['head.fc.weight'] = np.zeros((10, 512), np.float32)
  message = _error(state_dict, r18, tmp_path)
  assert "unexpected ['head.fc.weight', 'layer4.2.conv1.weight']" in message
  assert 'missing' not in message


def test_many_problems_are_cut_short(r18, r18_file, tmp_path):
  state_dict = {k: v for k, v in r18_file[1].items() if not k.startswith('layer4')}
  message = _error(state_dict, r18, tmp_path)
  assert ' more' in message and len(message) < 800


def test_resnet34_file_into_resnet18_is_reported(r18, tmp_path):
  state_dict = fake_state_dict(models.get_model('resnet34', num_classes=10))
  message = _error(state_dict, r18, tmp_path)
  assert "unexpected ['layer1.2." in message


def test_wrong_class_count_is_named(r18, tmp_path):
  state_dict = fake_state_dict(models.get_model('resnet18', num_classes=1000))
  message = _error(state_dict, r18, tmp_path, name='imagenet.safetensors')
  assert 'shape mismatch' in message and 'fc.weight (1000, 512) != (10, 512)' in message
  assert 'fc.bias (1000,) != (10,)' in message
  assert '1000 classes but the dataset has 10' in message
  assert 'missing' not in message


def test_conv_shape_mismatch_is_named_in_torch_layout(r18, r18_file, tmp_path):
  state_dict = dict(r18_file[1])
  state_dict['conv1.weight'] = np.zeros((64, 3, 3, 3), np.float32)
  message = _error(state_dict, r18, tmp_path)
  assert 'conv1.weight (64, 3, 3, 3) != (64, 3, 7, 7)' in message
  assert 'classes' not in message


def test_wrappers_and_prefixes(r18, r18_file, tmp_path):
  _, state_dict = r18_file
  expected = torch_import.to_flax_variables(state_dict, r18, SHAPE)
  prefixed = {'module.' + k: v for k, v in state_dict.items()}
  wrapped = [
      prefixed,
      {'state_dict': prefixed, 'epoch': 3},
      {'model': state_dict, 'optimizer': {'lr': 0.1}},
      {'model': {'module._orig_mod.' + k: v for k, v in state_dict.items()}},
  ]
  for obj in wrapped:
    got = torch_import.to_flax_variables(obj, r18, SHAPE)
    jax.tree.map(np.testing.assert_array_equal, got, expected)
  path = str(tmp_path / 'ddp.safetensors')  # A DataParallel model saved as is.
  safetensors_numpy.save_file(prefixed, path)
  jax.tree.map(np.testing.assert_array_equal, torch_import.load(path, r18, SHAPE), expected)
  with pytest.raises(KdjaxError, match='holds no state dict'):
    torch_import.to_flax_variables({'epoch': 3}, r18, SHAPE)


def test_half_precision_file_loads_as_float32(r18, r18_file, tmp_path):
  _, state_dict = r18_file
  half = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in state_dict.items()}
  path = str(tmp_path / 'half.safetensors')
  safetensors_numpy.save_file(half, path)
  variables = torch_import.load(path, r18, SHAPE)
  assert variables['params']['fc']['kernel'].dtype == np.float32
  np.testing.assert_array_equal(variables['params']['fc']['kernel'],
                                half['fc.weight'].astype(np.float32).T)


def test_unreadable_files(r18, tmp_path):
  bad = tmp_path / 'truncated.safetensors'
  bad.write_bytes(b'not a safetensors file')
  with pytest.raises(KdjaxError, match='not a readable safetensors file') as info:
    torch_import.load(str(bad), r18, SHAPE)
  assert '\n' not in str(info.value)
  other = tmp_path / 'weights.npz'
  other.write_bytes(b'x')
  with pytest.raises(KdjaxError, match='unknown suffix'):
    torch_import.load(str(other), r18, SHAPE)
  with pytest.raises(KdjaxError, match='is not a file'):
    torch_import.load(str(tmp_path / 'absent.safetensors'), r18, SHAPE)
  assert not torch_import.is_state_dict_file(str(other))
  assert torch_import.is_state_dict_file(str(bad))


def test_pth_without_torch_says_what_to_do(r18, tmp_path, monkeypatch):
  import builtins  # pylint: disable=g-import-not-at-top
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch' or name.startswith('torch.'):
      raise ImportError('No module named torch')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  path = tmp_path / 'resnet18.pth'
  path.write_bytes(b'PK')
  with pytest.raises(KdjaxError, match='pip install torch, or convert it once to .safetensors'):
    torch_import.read_state_dict(str(path))


# ---------------------------------------------------------------------------------------------
# Parity with PyTorch's forward pass (optional: needs torch and torchvision).


def _torch_parity(name, tmp_path, *, save_as='safetensors'):
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  torch.manual_seed(0)
  net = getattr(torchvision.models, name)(weights=None, num_classes=1000)
  with torch.no_grad():  # Non-trivial BatchNorm statistics and affine parameters.
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
      for block in layer:  # Small last-BN scales as in trained ResNets: realistic logits.
        getattr(block, 'bn3', block.bn2).weight.uniform_(0.2, 0.8)
  net.eval()
  if save_as == 'safetensors':
    import safetensors.torch  # pylint: disable=g-import-not-at-top
    path = str(tmp_path / f'{name}.safetensors')
    safetensors.torch.save_file(net.state_dict(), path)
  else:
    path = str(tmp_path / f'{name}.pth')
    torch.save({'state_dict': net.state_dict(), 'epoch': 90}, path)
  x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)  # NCHW
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  model = models.get_model(name, num_classes=1000)
  variables = torch_import.load(path, model, (1, 64, 64, 3))
  got = np.asarray(jax.jit(model.apply)(variables, np.transpose(x, (0, 2, 3, 1))))  # NHWC
  diff = float(np.max(np.abs(got - want)))
  print(f'{name} ({save_as}): max abs logit difference vs PyTorch {diff:.3g} '
        f'(logits std {want.std():.3g})')
  assert got.shape == want.shape == (2, 1000)
  assert diff <= 1e-4
  return diff


def test_resnet34_logits_match_pytorch(tmp_path):
  _torch_parity('resnet34', tmp_path)


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_resnet18_50_logits_match_pytorch(name, tmp_path):
  _torch_parity(name, tmp_path)


def test_pth_with_wrapper_matches_pytorch(tmp_path):
  _torch_parity('resnet18', tmp_path, save_as='pth')
