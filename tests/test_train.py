"""The trainer: sharding invariance, optimizer semantics, schedules, warm-up, config validation."""

import collections
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import conftest
from kdjax import checkpoint
from kdjax import config_base
from kdjax import methods
from kdjax import models
from kdjax import train
from kdjax.errors import KdjaxError
from kdjax.quickstart import load_recipe


@pytest.mark.parametrize('mode', ['', 'crd', 'shard'])
def test_eight_devices_give_the_same_steps_as_one(digits_data_dir, mode):
  """KD + DKD (BatchNorm statistics over the devices), CE + CRD (memory banks: the same on
  every device, and the same as on one device), and KD + DKD with an EMA with the teacher and
  the train state sharded over the 8 devices (teacher.shard, student.shard): the same losses
  and variables as the replicated run, a checkpoint that restores into the sharded state, and
  an export read onto one device."""
  env = conftest.cli_env()
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  out = subprocess.run([sys.executable, os.path.join(conftest.ROOT, 'tests', 'sharding_check.py'),
                        digits_data_dir, mode], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['num_devices'] == 8
  for one, many in zip(result['one'], result['many'], strict=True):
    assert one.keys() == many.keys()
    for key in one:
      np.testing.assert_allclose(many[key], one[key], rtol=2e-5 if mode != 'shard' else 1e-5,
                                 err_msg=key)
  assert result['max_abs_variable_diff'] < 1e-5
  assert result['replicas_agree']
  if mode == 'shard':
    # Each device holds an eighth of the big kernels (the largest dimension that divides).
    teacher, state = result['teacher_sharded'], result['state_sharded']
    assert teacher["['params']['conv2']['kernel']"] == [[3, 3, 32, 64], [3, 3, 32, 8]]
    assert teacher["['params']['fc']['kernel']"] == [[64, 10], [8, 10]]
    for part in ("params['student']", "opt_state[0].mu['student']", "ema['params']['student']"):
      assert state[f".{part}['conv2']['kernel']"] == [[3, 3, 32, 64], [3, 3, 32, 8]], part
    assert state[".batch_stats['student']['bn2']['mean']"] == [[64], [8]]
    assert result['restores'] and result['exports']
    size = result['teacher_bytes']
    assert size['per_device'] == size['one_device_shards'] < size['replicated']


def test_mesh_puts_each_process_devices_side_by_side():
  """Process p's devices are mesh positions [p * k, (p + 1) * k): its local batch rows are the
  contiguous rows [p * L, (p + 1) * L) of the global batch on any pod."""
  fake = collections.namedtuple('FakeDevice', 'process_index id')
  devices = [fake(1, 9), fake(0, 2), fake(2, 0), fake(1, 4), fake(0, 7), fake(2, 1)]
  assert train.process_ordered(devices) == [fake(0, 2), fake(0, 7), fake(1, 4), fake(1, 9),
                                            fake(2, 0), fake(2, 1)]
  mesh = train.make_mesh()
  order = [(d.process_index, d.id) for d in mesh.devices.flat]
  assert order == sorted(order) and mesh.axis_names == ('data',)
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


@pytest.mark.parametrize('shape, num_shards, dim', [
    ((3, 3, 256, 512), 8, 3),    # the largest dimension
    ((1020, 512), 8, 1),         # the largest one that divides
    ((512, 512), 8, 1),          # the last of equals
    ((1000, 10), 8, 0),
    ((4, 1001), 8, None),        # none divides: replicated
    ((3, 3, 1, 4), 8, None),     # smaller than the device count
    ((), 8, None),               # scalars (the step, optimizer counts)
    ((512, 512), 1, None),       # one device
])
def test_sharded_dimension_is_the_largest_that_divides(shape, num_shards, dim):
  assert train.sharded_dimension(shape, num_shards, min_size=0) == dim


def test_small_arrays_stay_replicated():
  assert train.sharded_dimension((64,), 8) is None  # a BatchNorm vector
  assert train.sharded_dimension((128, 128), 8) == 1  # 16,384 elements: MIN_SHARDED_SIZE


def test_the_teacher_is_sharded_automatically_only_when_it_would_not_fit():
  config = config_base.base_config()
  variables = {'params': {'w': np.zeros((1024, 1024), np.float32)}}  # 4 MiB
  def mesh(memory_stats):
    device = types.SimpleNamespace(memory_stats=lambda: memory_stats)
    return types.SimpleNamespace(shape={'data': 8}, local_devices=[device, device])
  sharded, why = train.shard_teacher(config, variables, mesh({'bytes_limit': 6 * 2**20}))
  assert sharded and why.startswith('automatically')
  assert not train.shard_teacher(config, variables, mesh({'bytes_limit': 16 * 2**20}))[0]
  assert not train.shard_teacher(config, variables, mesh(None))[0]  # CPU: no limit reported
  config.teacher.shard = True
  assert train.shard_teacher(config, variables, mesh(None)) == (True, 'teacher.shard')


def _optimizer_config(**kw):
  c = config_base.base_config().optimizer
  c.update(kw)
  return c


def test_step_schedule_decays_at_epoch_boundaries_and_scales_with_batch():
  cfg = _optimizer_config(learning_rate=0.1, lr_base_batch_size=256, schedule='step',
                          decay_epochs=(2, 3), decay_factor=0.1)
  sched = train.learning_rate_schedule(cfg, batch_size=512, steps_per_epoch=10, total_steps=40)
  np.testing.assert_allclose([sched(0), sched(19), sched(20), sched(29), sched(30)],
                             [0.2, 0.2, 0.02, 0.02, 0.002], rtol=1e-6)


def test_warmup_does_not_move_the_step_decays():
  cfg = _optimizer_config(learning_rate=1.0, schedule='step', decay_epochs=(2,), warmup_epochs=1)
  sched = train.learning_rate_schedule(cfg, batch_size=1, steps_per_epoch=10, total_steps=40)
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(19), sched(20)],
                             [0.0, 0.5, 1.0, 1.0, 0.1], atol=1e-6)


def test_warmup_then_cosine():
  cfg = _optimizer_config(learning_rate=1.0, schedule='cosine', warmup_epochs=1)
  sched = train.learning_rate_schedule(cfg, batch_size=1, steps_per_epoch=10, total_steps=110)
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(60), sched(110)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_follows_pytorch_semantics(nesterov):
  """PyTorch SGD: g += wd * p; buf = m * buf + g; p -= lr * (g + m * buf if nesterov else buf)."""
  cfg = _optimizer_config(name='sgd', learning_rate=0.1, momentum=0.9, nesterov=nesterov,
                          weight_decay=0.01, schedule='constant')
  tx, _ = train.make_optimizer(cfg, batch_size=1, steps_per_epoch=1, total_steps=3)
  p = jnp.array([1.0, -2.0])
  state = tx.init(p)
  ref_p, buf = np.array([1.0, -2.0]), np.zeros(2)
  for g in ([0.5, 0.1], [-0.3, 0.2], [0.1, 0.1]):
    updates, state = tx.update(jnp.array(g), state, p)
    p = optax.apply_updates(p, updates)
    d = np.array(g) + 0.01 * ref_p
    buf = 0.9 * buf + d
    ref_p = ref_p - 0.1 * (d + 0.9 * buf if nesterov else buf)
  np.testing.assert_allclose(p, ref_p, rtol=1e-6)


def test_warmup_factor_is_per_one_based_epoch():
  term = methods.build_terms(ml_collections.ConfigDict(
      {'dkd': dict(weight=1.0, warmup_epochs=20)}))[0]
  np.testing.assert_allclose([term.factor(1), term.factor(5), term.factor(20), term.factor(30)],
                             [0.05, 0.25, 1.0, 1.0])
  plain = methods.build_terms(ml_collections.ConfigDict({'kd': dict(weight=0.9)}))[0]
  assert plain.factor(1) == 1.0 and plain.hparams == {'temperature': 4.0, 'standardize': False}


def _pixels(config):
  """(mean, std) that normalise the eval pipeline's uint8 images on the device."""
  return tuple(config.input.mean), tuple(config.input.std)


def _digits_config(data_dir, arg=''):
  config = load_recipe(arg)
  with config.unlocked():
    config.data_dir = data_dir
  return config


def test_shipped_teacher_is_exact_on_the_whole_eval_split(digits_data_dir):
  config = _digits_config(digits_data_dir)
  with config.unlocked():
    config.eval_batch_size = 64  # 597 examples: 9 full batches and one padded
  setup = train.build(config)
  mesh = train.make_mesh()
  from kdjax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  batches = input_pipeline.eval_batches(config, setup.data.builder, local_batch_size=64)
  result = train.evaluate(jax.jit(train.make_eval_step(setup.networks.teacher,
                                                  pixels=_pixels(config))),
                          setup.networks.teacher_variables, None, batches, mesh)
  assert round(result['top1'] * 597) == pytest.approx(result['top1'] * 597, abs=1e-6)
  assert result['top1'] > 0.97  # the README's figure for the shipped teacher: 98.0%


def test_student_eval_against_the_kept_teacher_logits_equals_the_fused_eval(digits_data_dir):
  """The trainer's eval (the teacher's logits computed once, kept on the devices, one float32
  array per batch split like the batches) gives the metrics of the teacher-in-the-step eval."""
  from kdjax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = _digits_config(digits_data_dir)
  with config.unlocked():
    config.eval_batch_size = 64  # 597 examples: 9 full batches and one padded
  run = conftest.Run(config)
  run.step()
  nets, mesh = run.setup.networks, run.mesh
  variables = train.network_variables(run.state, 'student')
  batches = lambda: input_pipeline.eval_batches(config, run.setup.data.builder,
                                                local_batch_size=64)
  fused = train.evaluate(jax.jit(train.make_eval_step(nets.student, nets.teacher,
                                                            pixels=_pixels(config))), variables,
                         run.teacher, batches(), mesh)
  teacher_step = jax.jit(train.make_teacher_eval_step(nets.teacher, pixels=_pixels(config)),
                         out_shardings=(train.replicated(mesh), train.batch_sharded(mesh)))
  teacher, logits = train.evaluate_teacher(teacher_step, run.teacher, batches(), mesh)
  assert len(logits) == 10 and teacher['top1'] > 0.97
  assert all(x.shape == (64, 10) and x.dtype == jnp.float32 for x in logits)
  assert logits[0].sharding.is_equivalent_to(train.batch_sharded(mesh), 2)
  student_step = train.make_student_eval_step(nets.student, pixels=_pixels(config))
  kept = train.evaluate_against(jax.jit(student_step), variables,
                                logits, batches(), mesh)
  assert kept.keys() == fused.keys() == {'top1', 'top5', 'agreement', 'kl_teacher_student'}
  for key in fused:
    np.testing.assert_allclose(kept[key], fused[key], rtol=1e-6, err_msg=key)


def test_the_teacher_runs_over_the_eval_split_once_per_session(digits_data_dir, tmp_path,
                                                               monkeypatch):
  """Step 0's teacher eval fills the kept logits of a fresh run; a resumed session fills them at
  its first eval (and writes no teacher line). Every student eval line compares with them."""
  calls = []
  evaluate_teacher = train.evaluate_teacher
  monkeypatch.setattr(train, 'evaluate_teacher',
                      lambda *a: calls.append(1) or evaluate_teacher(*a))
  config = _digits_config(digits_data_dir, 'smoke')
  with config.unlocked():
    config.num_train_steps = 4
    config.eval_every_epochs = 2 / 18  # 18 steps per epoch: an eval every 2 steps
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir, progress='none')
  assert len(calls) == 1
  with config.unlocked():
    config.num_train_steps = 8  # a longer run; sharding on 1 device changes nothing
    config.teacher.shard = config.student.shard = True
  result = train.train_and_evaluate(config, workdir, progress='none')
  assert len(calls) == 2
  evals = [(r['step'], r['model']) for r in result.history if 'split' in r]
  assert evals == [(0, 'teacher'), (2, 'student'), (4, 'student'), (6, 'student'),
                   (8, 'student')]
  assert all('agreement' in r and 'kl_teacher_student' in r for r in result.history
             if r.get('model') == 'student')


@pytest.mark.parametrize('override, fragment', [
    (dict(batch_size=0), 'batch_size'),
    (dict(batch_size=3), 'not divisible'),
    (dict(student=dict(model='resnet19', dtype='float32')), "unknown model 'resnet19'"),
    (dict(losses=dict(kdd=dict(weight=1.0))), "unknown method 'kdd'"),
    (dict(losses=dict(kd=dict(weight=1.0, temprature=4.0))), 'temprature'),
    (dict(teacher=dict(model='digits_cnn', checkpoint='/nonexistent/teacher', dtype='float32')),
     '/nonexistent/teacher'),
    (dict(teacher=dict(model='cnn4', checkpoint=None, dtype='float32')), 'does not fit'),
    (dict(teacher=dict(model='digits_cnn', checkpoint='', dtype='float32')),
     'teacher.checkpoint is empty'),
    (dict(dataset='cifar100'), 'python -m kdjax.prepare cifar100'),
])
def test_bad_input_raises_one_clear_error(digits_data_dir, tmp_path, override, fragment):
  config = _digits_config(digits_data_dir)
  if override.get('batch_size') == 3 and jax.device_count() == 1:
    pytest.skip('needs more than one device')
  with config.unlocked():
    for key, value in override.items():
      if key == 'teacher' and value['checkpoint'] is None:
        value = dict(value, checkpoint=config.teacher.checkpoint)
      if key == 'dataset':
        config.data_dir = str(tmp_path)
      config[key] = value
  with pytest.raises(KdjaxError, match=None) as err:
    train.build(config)
  message = str(err.value)
  assert fragment in message and '\n' not in message


def test_unreadable_teacher_checkpoint_is_a_clear_error(tmp_path, digits_data_dir):
  bad = tmp_path / 'teacher'
  (bad / 'variables').mkdir(parents=True)
  (bad / checkpoint.EXPORT_METADATA).write_text('{}')
  (bad / 'variables' / '_METADATA').write_text('not a checkpoint')
  config = _digits_config(digits_data_dir)
  with config.unlocked():
    config.teacher.checkpoint = str(bad)
  with pytest.raises(KdjaxError, match='could not be read'):
    train.build(config)


def test_bfloat16_teacher_and_student_keep_float32_params_and_losses(digits_data_dir):
  config = _digits_config(digits_data_dir)
  with config.unlocked():
    config.student.model = 'digits_cnn'
    config.student.dtype = 'bfloat16'
    config.teacher.dtype = 'bfloat16'
  run = conftest.Run(config)
  batch = next(run.batches)
  metrics = run.step(batch)
  state, nets = run.state, run.setup.networks
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state)
             if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.floating))
  assert all(v.dtype == jnp.float32 and np.isfinite(v) for k, v in metrics.items()
             if k.startswith('loss') or k == 'lr')
  assert int(metrics['nonfinite']) == 0 and int(metrics['stop']) == 0
  # The bf16 teacher's logits stay close to the float32 teacher's.
  images = run.global_batch(batch)['image']
  t32 = train.teacher_forward(models.get_model('digits_cnn', num_classes=10),
                              nets.teacher_variables, images, [])['logits']
  t16 = train.teacher_forward(nets.teacher, nets.teacher_variables, images, [])['logits']
  assert t16.dtype == jnp.float32
  np.testing.assert_allclose(t16, t32, atol=0.1 * float(jnp.std(t32)))


def test_weight_schedule_follows_zero_based_epochs():
  term = methods.build_terms(ml_collections.ConfigDict(
      {'skd': dict(weight=0.9, weight_schedule=((60, 0.5), (80, 0.1)))}))[0]
  # Epochs are 1-based inside the step: 1-based epoch 61 is the first of 0-based epoch 60.
  np.testing.assert_allclose([term.weight_at(1), term.weight_at(60), term.weight_at(61),
                              term.weight_at(81), term.weight_at(100)],
                             [0.9, 0.9, 0.5, 0.1, 0.1])


def test_terms_compose_without_code_changes(digits_data_dir):
  """CE + DKD + grouped DIST + WSL + OFA in one objective; each term is logged."""
  config = _digits_config(digits_data_dir)
  with config.unlocked():
    config.losses = dict(ce=dict(weight=1.0),
                         dkd=dict(weight=1.0, warmup_epochs=5, alpha=1.0, beta=2.0,
                                  temperature=4.0),
                         dist=dict(weight=2.0, temperature=4.0, group_size=16),
                         wsl=dict(weight=0.5, temperature=2.0),
                         ofa=dict(weight=1.0, eps=1.5, stages=()))  # logits only: mlp32
  metrics = conftest.Run(config).step()
  terms = {k[5:]: float(v) for k, v in metrics.items() if k.startswith('loss/')}
  assert set(terms) == {'ce', 'dkd', 'dist', 'wsl', 'ofa'}
  expected = (terms['ce'] + 0.2 * terms['dkd'] + 2 * terms['dist'] + 0.5 * terms['wsl']
              + terms['ofa'])  # DKD's warm-up factor at epoch 1 of 5 is 0.2
  np.testing.assert_allclose(float(metrics['loss']), expected, rtol=1e-5)


def test_grouped_loss_is_the_mean_over_groups():
  term = methods.build_terms(ml_collections.ConfigDict(
      {'dist': dict(weight=1.0, group_size=4)}), batch_size=8)[0]
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 8, 5)).astype(np.float32)
  out = {'student': {'logits': s}, 'teacher': {'logits': t}}
  labels = np.zeros(8, np.int32)
  from kdjax import losses  # pylint: disable=g-import-not-at-top
  want = np.mean([losses.dist(s[i:i + 4], t[i:i + 4], beta=1.0, gamma=1.0, temperature=1.0)
                  for i in (0, 4)])
  np.testing.assert_allclose(term(out, labels), want, rtol=1e-6)
  with pytest.raises(KdjaxError, match='group_size'):
    methods.build_terms(ml_collections.ConfigDict({'dist': dict(weight=1.0, group_size=3)}),
                        batch_size=8)


def test_student_checkpoint_initialises_the_student(digits_data_dir):
  from kdjax import recipes  # pylint: disable=g-import-not-at-top
  config = _digits_config(digits_data_dir)
  with config.unlocked():
    config.student.model = 'digits_cnn'
    config.student.checkpoint = recipes.DIGITS_TEACHER  # an export folder of a digits_cnn
  setup = train.build(config)
  state = train.create_state(setup, train.make_mesh(), 0)
  exported, _ = checkpoint.load_exported(recipes.DIGITS_TEACHER)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params['student']),
               exported['params'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.batch_stats['student']),
               exported['batch_stats'])
  assert setup.networks.student_source['source'].endswith('digits_teacher')
  with config.unlocked():
    config.student.model = 'mlp32'
  with pytest.raises(KdjaxError, match="student.checkpoint .* does not fit student.model"):
    train.build(config)


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu():
  assert train.resolve_dtype('auto', 'gpu') == train.resolve_dtype('auto', 'tpu') == 'bfloat16'
  assert train.resolve_dtype('auto', 'cpu') == 'float32'
  assert train.resolve_dtype('bfloat16', 'cpu') == 'bfloat16'
  assert config_base.base_config().teacher.dtype == 'auto'
  with pytest.raises(KdjaxError, match='valid: auto, float32, bfloat16'):
    train._dtype('float16', 'teacher.dtype')  # pylint: disable=protected-access
