"""Feature and relation methods in the trainer: any teacher/student pair, connectors, margins.

The pair resnet8x4 (teacher; stages 64/128/256 channels) -> resnet20 (student; 16/32/64) differs
in channels at every tap, and no recipe below names a channel count.
"""

import jax
import numpy as np
import pytest

import conftest
from kdjax import checkpoint
from kdjax import losses
from kdjax import methods
from kdjax import train

CIFAR_STAGES = ('layer1', 'layer2', 'layer3')
METHODS = {
    'at': dict(weight=1000.0, taps=CIFAR_STAGES),
    'nst': dict(weight=50.0, taps=CIFAR_STAGES),
    'sp': dict(weight=3000.0, tap='layer3', group_size=8),
    'rkd': dict(weight=1.0, group_size=8),
    'pkt': dict(weight=30000.0, group_size=8),
    'cc': dict(weight=0.02, group_size=8),
    'fitnet': dict(weight=100.0, student_tap='layer2', teacher_tap='layer2'),
    'fitnet_down': dict(method='fitnet', weight=100.0, student_tap='layer1', teacher_tap='layer2'),
    'ofd': dict(weight=1e-3, stages=(1, 2, 3)),
    'mgd': dict(weight=7e-5, tap='layer3'),
    'pefd': dict(weight=25.0),
    'crd': dict(weight=0.8, num_negatives=64),
    'reviewkd': dict(weight=5.0, warmup_epochs=20,
                     student_taps=('layer1', 'layer2', 'layer3', 'pooled'),
                     teacher_taps=('layer1_pre', 'layer2_pre', 'layer3_pre', 'pooled')),
}


def _config(data_dir, name):
  config = conftest.cifar_pair_config(data_dir, {'ce': dict(weight=1.0), name: METHODS[name]})
  with config.unlocked():
    config.input.add_index = name == 'crd'
  return config


# Each case compiles two CIFAR ResNets (~10 s); three run by default, the rest with -m slow.
FAST = ('at', 'ofd', 'reviewkd', 'crd')


@pytest.mark.parametrize('name', [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(METHODS)])
def test_method_trains_a_step_on_a_mismatched_pair(cifar_data_dir, name):
  run = conftest.Run(_config(cifar_data_dir, name))
  teacher_before = jax.tree.map(np.copy, run.setup.networks.teacher_variables)
  before = jax.device_get(run.state.params)
  metrics = run.step()
  after = jax.device_get(run.state.params)
  assert np.isfinite(float(metrics[f'loss/{name}'])) and float(metrics[f'loss/{name}']) > 0
  # Gradients reach the student (and the connectors, if any); the teacher is untouched.
  moved = lambda a, b: max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()),
                                                        a, b)))
  assert moved(before['student'], after['student']) > 0
  has_connector = name in ('cc', 'fitnet', 'fitnet_down', 'ofd', 'mgd', 'pefd', 'reviewkd', 'crd')
  assert ('connectors' in after) == has_connector
  if has_connector:
    assert moved(before['connectors'], after['connectors']) > 0
  jax.tree.map(np.testing.assert_array_equal, teacher_before,
               run.setup.networks.teacher_variables)


def test_ofd_margins_come_from_the_teachers_bn_before_relu(cifar_data_dir):
  setup = train.build(_config(cifar_data_dir, 'ofd'))
  term = setup.objective.term('ofd')
  params = setup.networks.teacher_variables['params']
  for i, margin in zip((1, 2, 3), term.constants['margins']):
    bn = params[f'layer{i}']['block0']['bn2']  # resnet8x4: one block per stage
    np.testing.assert_allclose(margin, losses.ofd_margin(bn['scale'], bn['bias']))
    assert margin.shape == (setup.networks.tap_shapes['teacher'][f'layer{i}_pre'].shape[-1],)


def test_connectors_are_checkpointed_but_not_exported(tmp_path, cifar_data_dir):
  config = _config(cifar_data_dir, 'fitnet')
  with config.unlocked():
    config.num_train_steps = 2
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  _, manager, _ = checkpoint.latest_metadata(str(tmp_path / 'run'))
  manager.close()
  variables, _ = checkpoint.restore_student(str(tmp_path / 'run'))
  assert 'connectors' not in variables['params'] and 'regressor' not in str(
      jax.tree_util.tree_structure(variables))
  meta = checkpoint.export_workdir(str(tmp_path / 'run'), str(tmp_path / 'export'))
  exported, _ = checkpoint.load_exported(str(tmp_path / 'export'))
  assert meta['model'] == 'resnet20' and set(exported) == {'params', 'batch_stats'}
  assert 'regressor' not in str(jax.tree_util.tree_structure(exported))


@pytest.mark.slow
def test_udml_pulls_both_peers_features_together(digits_data_dir, tmp_path):
  config, _ = conftest.load_recipe('digits_kd', 'smoke')
  with config.unlocked():
    config.data_dir = digits_data_dir
    config.teacher.model = ''
    config.student.model = config.peer.model = 'digits_cnn'
    config.losses = dict(ce=dict(weight=1.0),
                         ce_peer=dict(method='ce', weight=1.0, network='peer'),
                         dml=dict(weight=1.0), udml=dict(weight=1.0, tap='pooled'))
  run = conftest.Run(config)
  batch = run.global_batch(next(run.batches))
  grads_of = lambda name: jax.grad(lambda p: train.make_train_step(run.setup)(
      run.state.replace(params=p), None, batch)[1]['loss/udml'])(run.state.params)[name]
  for name in ('student', 'peer'):
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_of(name))) > 0


def test_reviewkd_abf_chain_matches_every_teacher_target_for_r34_r18():
  from kdjax import models  # pylint: disable=g-import-not-at-top
  shape = (1, 224, 224, 3)
  term = methods.build_terms({'reviewkd': dict(weight=1.0)})[0]
  taps = term.reads
  s_shapes = train.tap_shapes(models.get_model('resnet18', num_classes=1000), taps['student'],
                              shape)
  t_shapes = train.tap_shapes(models.get_model('resnet34', num_classes=1000), taps['teacher'],
                              shape)
  shapes = {'student': s_shapes, 'teacher': t_shapes}
  module = term.build_connector(methods.BuildContext(), shapes)
  assert module.mid == 512
  zeros = lambda tree: jax.tree.map(lambda s: np.zeros(s.shape, np.float32), tree)
  out = jax.eval_shape(lambda s, t: module.init_with_output(jax.random.key(0), s, t, False)[0],
                       zeros(term.select(shapes, 'student')), zeros(term.select(shapes, 'teacher')))
  assert [level.shape for level in out.levels] == [
      (1, 56, 56, 64), (1, 28, 28, 128), (1, 14, 14, 256), (1, 7, 7, 512), (1, 1, 1, 512)]


def test_crd_memory_rows_of_the_batch_are_updated_and_z_is_set_once(cifar_data_dir):
  run = conftest.Run(_config(cifar_data_dir, 'crd'))
  assert run.setup.objective.term('crd').constants['num_data'] == 96
  memory = lambda: jax.device_get(run.state.batch_stats['connectors']['crd']['crd_memory'])
  before = memory()
  assert before['z_student'] == -1 and before['student'].shape == (96, 128)
  batch = next(run.batches)
  run.step(batch)
  after = memory()
  changed = np.flatnonzero(np.abs(after['student'] - before['student']).max(axis=1) > 0)
  np.testing.assert_array_equal(np.sort(changed), np.sort(batch['index']))
  np.testing.assert_allclose(np.linalg.norm(after['teacher'][batch['index']], axis=1), 1,
                             rtol=1e-5)
  z = float(after['z_student'])
  assert z > 0
  run.step()
  assert float(memory()['z_student']) == z  # set on the first step, then frozen
