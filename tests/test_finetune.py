"""Fine-tuning on other classes (student.reset_classifier) and the way back to PyTorch
(torch_import.to_state_dict / save_state_dict).

The numpy tests always run (they need only ``safetensors``); the parity tests load the written
file into torchvision / timm and run only where those are installed.
"""

import json
import os

import jax
import numpy as np
import pytest

import conftest
from kdjax import checkpoint
from kdjax import config_base
from kdjax import models
from kdjax import recipes
from kdjax import torch_import
from kdjax import train
from kdjax import workdir as workdir_lib
from kdjax.errors import KdjaxError

safetensors_numpy = pytest.importorskip('safetensors.numpy')

SHAPE = (1, 32, 32, 3)


def random_variables(model, input_shape=SHAPE, seed=0):
  """Variables of ``model`` with distinct random values everywhere (numpy; no init run)."""
  rng = np.random.default_rng(seed)
  out = {}
  for collection, flat in torch_import.abstract_variables(model, input_shape).items():
    tree = {}
    for path, shape in flat.items():
      values = rng.standard_normal(shape).astype(np.float32)
      node = tree
      for part in path[:-1]:
        node = node.setdefault(part, {})
      node[path[-1]] = np.abs(values) + 0.5 if path[-1] == 'var' else values
    out[collection] = tree
  return out


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


# ---------------------------------------------------------------------------------------------
# to_state_dict / save_state_dict.


def test_resnet18_round_trips_in_torchvision_layout(tmp_path):
  model = models.get_model('resnet18', num_classes=10)
  variables = random_variables(model)
  state_dict = torch_import.to_state_dict(variables, model)
  assert state_dict['conv1.weight'].shape == (64, 3, 7, 7)  # OIHW
  assert state_dict['fc.weight'].shape == (10, 512)  # [out, in]
  downsample_bn = variables['batch_stats']['layer2']['block0']['downsample_bn']
  np.testing.assert_array_equal(state_dict['layer2.0.downsample.1.running_var'],
                                downsample_bn['var'])
  np.testing.assert_array_equal(state_dict['bn1.weight'], variables['params']['bn1']['scale'])
  assert state_dict['layer4.1.bn2.num_batches_tracked'].dtype == np.int64
  assert all(v.flags['C_CONTIGUOUS'] for v in state_dict.values())
  _equal(torch_import.to_flax_variables(state_dict, model, SHAPE), variables)
  path = torch_import.save_state_dict(variables, model, tmp_path / 'r18.safetensors')
  assert set(safetensors_numpy.load_file(path)) == set(state_dict)
  _equal(torch_import.load(path, model, SHAPE), variables)


@pytest.mark.parametrize('name,size', [('mobilenetv2_100', 32), ('deit_tiny_patch16_224', 224)])
def test_timm_layout_round_trips(name, size):
  model = models.get_model(name, num_classes=10)
  shape = (1, size, size, 3)
  variables = random_variables(model, shape)
  state_dict = torch_import.to_state_dict(variables, model)
  assert ('blocks.1.0.conv_dw.weight' in state_dict or 'blocks.11.attn.qkv.weight' in state_dict)
  _equal(torch_import.to_flax_variables(state_dict, model, shape), variables)


def test_models_without_a_torch_counterpart_and_other_suffixes_are_refused(tmp_path):
  cifar = models.get_model('resnet20', num_classes=10)
  with pytest.raises(KdjaxError, match='resnet20 has no torchvision/timm counterpart'):
    torch_import.to_state_dict(random_variables(cifar), cifar)
  model = models.get_model('resnet18', num_classes=10)
  variables = random_variables(model)
  with pytest.raises(KdjaxError, match='save_state_dict writes .safetensors'):
    torch_import.save_state_dict(variables, model, tmp_path / 'r18.pth')
  with pytest.raises(KdjaxError, match="collection 'intermediates'"):
    torch_import.to_state_dict({**variables, 'intermediates': {'x': np.zeros(1)}}, model)


def test_written_resnet18_loads_strictly_into_torchvision_with_the_same_logits(tmp_path):
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  model = models.get_model('resnet18', num_classes=1000)
  variables = jax.device_get(model.init(jax.random.key(0), np.zeros(SHAPE, np.float32)))
  rng = np.random.default_rng(1)  # Non-trivial BatchNorm statistics and affines.
  for collection, leaf, low, high in (('batch_stats', 'mean', -0.5, 0.5),
                                      ('batch_stats', 'var', 0.5, 2.0),
                                      ('params', 'scale', 0.5, 1.5),
                                      ('params', 'bias', -0.5, 0.5)):
    variables[collection] = jax.tree_util.tree_map_with_path(
        lambda p, v, leaf=leaf, low=low, high=high: (
            rng.uniform(low, high, v.shape).astype(np.float32) if p[-1].key == leaf else v),
        variables[collection])
  path = torch_import.save_state_dict(variables, model, tmp_path / 'r18.safetensors')
  net = torchvision.models.resnet18(weights=None)
  net.load_state_dict(safetensors.torch.load_file(path), strict=True)
  x = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype(np.float32)  # NHWC
  with torch.no_grad():
    want = net.eval()(torch.from_numpy(np.transpose(x, (0, 3, 1, 2)))).numpy()
  got = np.asarray(jax.jit(model.apply)(variables, x))
  assert want.std() > 1e-2
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize('name', ['mobilenetv3_small_100', 'deit_tiny_patch16_224'])
def test_written_timm_layout_loads_strictly_into_timm(name):
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  model = models.get_model(name, num_classes=1000)
  state_dict = torch_import.to_state_dict(random_variables(model, (1, 224, 224, 3)), model)
  net = timm.create_model(name, pretrained=False)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)


# ---------------------------------------------------------------------------------------------
# student.reset_classifier.


@pytest.fixture(scope='module')
def imagenet_r18(tmp_path_factory):
  """A 1000-class resnet18 state dict file (random init) and its variables."""
  model = models.get_model('resnet18', num_classes=1000)
  variables = random_variables(model, seed=3)
  path = str(tmp_path_factory.mktemp('finetune') / 'r18_in1k.safetensors')
  torch_import.save_state_dict(variables, model, path)
  return path, variables


def _finetune_config(data_dir, path, reset):
  """A 2-step CE run of resnet18 on the (fake, 100-class, 32x32) cifar100 from ``path``."""
  config, _ = conftest.load_recipe('kd_r32x4_r8x4', 'smoke')
  with config.unlocked():
    config.data_dir = data_dir
    config.student.model = 'resnet18'
    config.student.checkpoint = path
    config.student.reset_classifier = reset
    config.losses = {'ce': {'weight': 1.0}}
    config.num_train_steps = 2
  return config


def test_reset_classifier_fine_tunes_1000_class_weights_on_100_classes(
    imagenet_r18, cifar_data_dir, tmp_path):
  path, file_variables = imagenet_r18
  config = _finetune_config(cifar_data_dir, path, reset=True)
  setup = train.build(config)
  assert setup.networks.student_source['reset_classifier'] == 'fc'
  state = jax.device_get(train.create_state(setup, train.make_mesh(), config.seed))
  started = {'params': state.params['student'], 'batch_stats': state.batch_stats['student']}
  _equal(checkpoint.without_classifier(started, ('fc',)),
         checkpoint.without_classifier(file_variables, ('fc',)))
  fresh = setup.networks.student.init(jax.random.fold_in(jax.random.key(config.seed), 0),
                                      np.zeros(SHAPE, np.float32))['params']['fc']
  assert started['params']['fc']['kernel'].shape == (512, 100)
  _equal(started['params']['fc'], jax.device_get(fresh))  # A random student's classifier.

  result = train.train_and_evaluate(config, str(tmp_path / 'run'), setup=setup)
  assert np.isfinite(result.history[0]['loss'])
  _, metadata = checkpoint.Manager(str(tmp_path / 'run'), config).latest_metadata()
  assert metadata['student_init']['reset_classifier'] == 'fc'
  assert metadata['student_init']['source'] == os.path.abspath(path)


def test_without_reset_classifier_the_class_count_is_one_line_naming_it(imagenet_r18,
                                                                       cifar_data_dir):
  config = _finetune_config(cifar_data_dir, imagenet_r18[0], reset=False)
  with pytest.raises(KdjaxError) as error:
    train.build(config)
  message = str(error.value)
  assert '\n' not in message
  assert "fc.weight (1000, 512) != (100, 512)" in message
  assert '--config.student.reset_classifier=True' in message


def test_reset_classifier_from_an_export_folder_checks_everything_else():
  model = models.get_model('digits_cnn', num_classes=3)  # the shipped teacher has 10 classes
  with pytest.raises(KdjaxError, match='reset_classifier=True') as error:
    checkpoint.load_variables(recipes.DIGITS_TEACHER, model, (1, 8, 8, 1), network='student')
  assert "['params']['fc']['kernel']" in str(error.value)
  assert 'classifier has 10 classes but the dataset has 3' in str(error.value)
  variables, source = checkpoint.load_variables(recipes.DIGITS_TEACHER, model, (1, 8, 8, 1),
                                                network='student', reset_classifier=True)
  exported, _ = checkpoint.load_exported(recipes.DIGITS_TEACHER)
  assert 'fc' not in variables['params'] and source['reset_classifier'] == 'fc'
  _equal(variables, checkpoint.without_classifier(exported, ('fc',)))
  mlp = models.get_model('mlp32', num_classes=3)  # Other layers still have to fit.
  with pytest.raises(KdjaxError, match='does not fit student.model'):
    checkpoint.load_variables(recipes.DIGITS_TEACHER, mlp, (1, 8, 8, 1), network='student',
                              reset_classifier=True)


def test_reset_classifier_needs_a_checkpoint_and_is_no_trajectory_change(cifar_data_dir):
  config = _finetune_config(cifar_data_dir, '', reset=True)
  with pytest.raises(KdjaxError, match='student.checkpoint, which is empty'):
    train.build(config)
  saved = json.loads(config.to_json_best_effort())
  del saved['student']['reset_classifier']  # A run started before the key existed.
  defaults = json.loads(config_base.base_config().to_json_best_effort())
  now = json.loads(config.to_json_best_effort())
  now['student']['reset_classifier'] = False
  assert workdir_lib.config_changes(saved, now, defaults) == ([], [])
  now['student']['reset_classifier'] = True
  assert workdir_lib.config_changes(saved, now, defaults) == (
      [], ['student.reset_classifier: false -> true'])
