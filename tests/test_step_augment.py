"""The train-step side of the ViT / MLP-student recipe: Mixup / CutMix, stochastic depth, the EMA
of the weights, gradient clipping and the cosine floor (docs/design.md#training-vit-and-mlp-students)."""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import conftest
import tiny_models
from kdjax import checkpoint
from kdjax import config_base
from kdjax import layers
from kdjax import losses
from kdjax import methods
from kdjax import mixup
from kdjax import models
from kdjax import train
from kdjax import workdir as workdir_lib
from kdjax.errors import KdjaxError
from kdjax.quickstart import load_recipe


def _override(config, overrides):
  """Sets dotted keys ('mixup.prob') of `config` (unlocked by the caller)."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value


@pytest.fixture
def tiny_vit(monkeypatch):
  monkeypatch.setitem(models.MODELS, tiny_models.NAME, tiny_models.vit_tiny_test)
  return tiny_models.NAME


def _vit_config(data_dir, **overrides):
  """digits KD (all labels) with the tiny ViT student, Mixup + CutMix, drop path and EMA."""
  config = load_recipe()
  with config.unlocked():
    config.data_dir = data_dir
    config.input.num_labeled = 0
    config.student.model = tiny_models.NAME
    config.student.drop_path_rate = 0.2
    config.mixup.update(mixup_alpha=0.8, cutmix_alpha=1.0)
    config.ema.decay = 0.9
    _override(config, overrides)
  return config


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'examples_per_sec'} for line in f]


# --------------------------------------------------------------------------------------------
# Mixup / CutMix
# --------------------------------------------------------------------------------------------


def _batch(b=6, h=8, w=10, c=3, k=5, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, h, w, c)).astype(np.float32),
          rng.integers(0, k, size=b).astype(np.int32))


def test_mixup_with_a_fixed_lambda_equals_numpy():
  images, labels = _batch()
  lam = 0.3
  params = mixup.MixParams(lam=jnp.float32(lam), use_cutmix=jnp.bool_(False),
                           box=jnp.zeros(4, jnp.int32))
  mixed, targets = mixup.mix(images, labels, 5, params)
  np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-6)
  onehot = np.eye(5, dtype=np.float32)[labels]
  np.testing.assert_allclose(targets, lam * onehot + (1 - lam) * onehot[::-1], rtol=1e-6)


def _timm_box(lam, cy, cx, h, w):
  """timm 1.0.31's rand_bbox for a given centre, and cutmix_bbox_and_lam's corrected lam."""
  ratio = np.sqrt(1 - lam)
  cut_h, cut_w = int(h * ratio), int(w * ratio)
  yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
  xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
  return (yl, yh, xl, xh), 1.0 - (yh - yl) * (xh - xl) / float(h * w)


@pytest.mark.parametrize('lam, cy, cx', [(0.3, 4, 5), (0.7, 0, 9), (0.05, 7, 0), (1.0, 3, 3)])
def test_cutmix_box_and_area_correction_equal_timm(lam, cy, cx):
  images, labels = _batch()
  box, corrected = mixup.cutmix_box(jnp.float32(lam), cy, cx, 8, 10)
  (yl, yh, xl, xh), want = _timm_box(lam, cy, cx, 8, 10)
  assert tuple(np.asarray(box)) == (yl, yh, xl, xh)
  np.testing.assert_allclose(corrected, want, rtol=1e-6)
  params = mixup.MixParams(lam=corrected, use_cutmix=jnp.bool_(True), box=box)
  mixed, targets = mixup.mix(images, labels, 5, params)
  expected = images.copy()
  expected[:, yl:yh, xl:xh] = images[::-1, yl:yh, xl:xh]
  np.testing.assert_array_equal(mixed, expected)
  onehot = np.eye(5, dtype=np.float32)[labels]
  np.testing.assert_allclose(targets, want * onehot + (1 - want) * onehot[::-1], rtol=1e-6)


def test_draws_are_a_pure_function_of_seed_and_step_with_the_configured_rates():
  cfg = config_base.base_config().mixup
  cfg.update(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, switch_prob=0.5)
  images, labels = _batch(b=8, h=8, w=8, c=1, k=10)
  key = lambda seed, step: jax.random.fold_in(train.rng_stream(seed, 'step'), step)
  mix = lambda seed, step: train.mix_batch(ml_collections.ConfigDict({'mixup': cfg}), 10,
                                           images, labels, key(seed, step))
  first, again, other = mix(0, 3), mix(0, 3), mix(0, 4)
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not np.array_equal(first[0], other[0])
  assert not np.array_equal(first[0], mix(1, 3)[0])
  # labels: the dominant class of the mixed targets.
  np.testing.assert_array_equal(first[1], np.argmax(first[2], -1))
  # Over many steps: mixed with probability prob, CutMix in switch_prob of those.
  draws = jax.vmap(lambda s: mixup.draw(train.step_key(key(0, s), 'mixup'), cfg, 8, 8))(
      jnp.arange(4000))
  cut = np.asarray(draws.use_cutmix)  # only ever set on mixed batches
  applied = (np.asarray(draws.lam) < 1) | cut  # (a tiny CutMix box can leave lam at 1)
  assert abs(applied.mean() - 0.8) < 0.03
  assert abs(cut[applied].mean() - 0.5) < 0.04
  box = np.asarray(draws.box)
  area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
  np.testing.assert_allclose(np.asarray(draws.lam)[cut], 1 - area[cut] / 64, rtol=1e-6)


def test_mixup_refuses_hidden_labels(digits_data_dir, tiny_vit):
  config = _vit_config(digits_data_dir, **{'input.num_labeled': 100})
  with pytest.raises(KdjaxError, match='mixup / cutmix need every training label') as err:
    train.build(config)
  assert '\n' not in str(err.value)


# --------------------------------------------------------------------------------------------
# Soft-target cross-entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_ce_with_soft_targets_equals_numpy(smoothing):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, size=6)
  onehot = np.eye(5)[labels]
  targets = (0.35 * onehot + 0.65 * onehot[::-1]).astype(np.float32)
  z = logits.astype(np.float64)
  log_p = z - z.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  want = np.mean(-np.sum(((1 - smoothing) * targets + smoothing / 5) * log_p, -1))
  term = methods.build_terms(ml_collections.ConfigDict(
      {'ce': dict(weight=1.0, label_smoothing=smoothing)}))[0]
  got = term({'student': {'logits': logits}}, np.argmax(targets, -1), None, targets)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # One-hot targets give the hard-label cross-entropy.
  np.testing.assert_allclose(
      losses.soft_cross_entropy(logits, onehot.astype(np.float32), label_smoothing=smoothing),
      losses.cross_entropy(logits, labels, label_smoothing=smoothing), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Stochastic depth
# --------------------------------------------------------------------------------------------


class _Branch(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x, train=False):
    return layers.drop_path(self, x, self.rate, train)


def test_drop_path_keeps_or_drops_whole_examples_and_is_the_identity_at_eval():
  x = jnp.ones((256, 3, 4), jnp.float32)
  out = _Branch(0.25).apply({}, x, train=True, rngs={'dropout': jax.random.key(0)})
  per_example = np.asarray(out).reshape(256, -1)
  assert set(np.unique(per_example)) == {0.0, np.float32(1 / 0.75)}
  assert (per_example == per_example[:, :1]).all()  # one draw per example
  assert abs((per_example[:, 0] > 0).mean() - 0.75) < 0.08
  other = _Branch(0.25).apply({}, x, train=True, rngs={'dropout': jax.random.key(1)})
  assert not np.array_equal(out, other)
  assert _Branch(0.25).apply({}, x, train=False) is x
  assert _Branch(0.0).apply({}, x, train=True) is x  # no rng needed either
  assert layers.drop_path_rates(0.1, 3) == pytest.approx([0.0, 0.05, 0.1])


def test_vit_drop_path_at_eval_and_rate_zero_change_nothing():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  plain, dropped = tiny_models.vit_tiny_test(), tiny_models.vit_tiny_test(drop_path_rate=0.5)
  variables = plain.init(jax.random.key(1), x)
  assert jax.tree.structure(variables) == jax.tree.structure(dropped.init(jax.random.key(1), x))
  reference = plain.apply(variables, x, train=False)
  np.testing.assert_array_equal(dropped.apply(variables, x, train=False), reference)
  np.testing.assert_array_equal(plain.apply(variables, x, train=True), reference)
  trained = dropped.apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(trained, reference)


def test_drop_path_rate_on_a_model_without_it_is_one_clear_error(digits_data_dir):
  config = load_recipe()
  with config.unlocked():
    config.data_dir = digits_data_dir
    config.student.drop_path_rate = 0.1  # mlp32
  with pytest.raises(KdjaxError, match=r"model 'mlp32' \(student.model\) does not support "
                                       r'drop_path_rate \(student.drop_path_rate=0.1\)'):
    train.build(config)
  model = models.get_model('swin_tiny_patch4_window7_224', num_classes=3, drop_path_rate=0.1)
  assert model.drop_path_rate == 0.1
  assert models.get_model('resnet18', num_classes=3, drop_path_rate=0.0) is not None


# --------------------------------------------------------------------------------------------
# Optimizer: clipping, cosine floor and warm-up start
# --------------------------------------------------------------------------------------------


def test_cosine_with_floor_and_warmup_start_follows_timm_per_step():
  cfg = config_base.base_config().optimizer
  cfg.update(learning_rate=1.0, schedule='cosine', warmup_epochs=1, warmup_learning_rate=0.1,
             min_learning_rate=0.01)
  sched = train.learning_rate_schedule(cfg, batch_size=1, steps_per_epoch=10, total_steps=110)
  # timm CosineLRScheduler(t_initial=100, lr_min=0.01, warmup_t=10, warmup_lr_init=0.1,
  # warmup_prefix=True), stepped per update.
  timm = lambda t: (0.1 + t * 0.09 if t < 10 else
                    0.01 + 0.495 * (1 + np.cos(np.pi * (t - 10) / 100)))
  steps = [0, 5, 10, 35, 60, 100, 110]
  np.testing.assert_allclose([sched(t) for t in steps], [timm(t) for t in steps], rtol=1e-5)


def test_gradient_clipping_scales_to_the_global_norm():
  cfg = config_base.base_config().optimizer
  cfg.update(name='sgd', learning_rate=1.0, momentum=0.0, schedule='constant', clip_grad_norm=1.0)
  tx, _ = train.make_optimizer(cfg, batch_size=1, steps_per_epoch=1, total_steps=1)
  params = {'a': jnp.zeros(2), 'b': jnp.zeros(1)}
  grads = {'a': jnp.array([3.0, 0.0]), 'b': jnp.array([4.0])}  # norm 5
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['a'], [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(updates['b'], [-0.8], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# EMA, resume, export, 8 devices
# --------------------------------------------------------------------------------------------


def test_ema_follows_the_numpy_recurrence(digits_data_dir, tiny_vit):
  run = conftest.Run(_vit_config(digits_data_dir, **{'ema.decay': 0.8}))
  d = np.float32(0.8)
  ema = jax.device_get(run.state.params['student'])
  for _ in range(3):
    run.step()
    new = jax.device_get(run.state.params['student'])
    ema = jax.tree.map(lambda e, p: d * e + np.float32(1 - 0.8) * p, ema, new)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(run.state.ema['params']['student']), ema)
  assert not np.allclose(jax.tree.leaves(ema)[0], jax.tree.leaves(new)[0])


def test_resume_export_and_eval_lines_with_mixup_ema_and_drop_path(tmp_path, digits_data_dir,
                                                                    tiny_vit):
  # 18 steps per epoch: evaluations every 4 steps (and at the end), checkpoints every 2.
  short = dict(num_train_steps=6, eval_every_epochs=4 / 18, checkpoint_every_steps=2,
               log_every_steps=2, keep_checkpoints=5)
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  final = train.train_and_evaluate(_vit_config(digits_data_dir, **short), straight)
  train.train_and_evaluate(_vit_config(digits_data_dir, **dict(short, num_train_steps=4)),
                           resumed)
  train.train_and_evaluate(_vit_config(digits_data_dir, **short), resumed)
  records = _records(straight)
  assert _records(resumed) == records
  evals = [(r['step'], r['model']) for r in records if 'split' in r]
  assert evals == [(0, 'teacher')] + [(s, m) for s in (4, 6) for m in ('student',
                                                                      'student_ema')]
  assert final == {k: v for k, v in records[-1].items() if k not in ('step', 'split', 'model')}
  # Export takes the EMA (the metadata says so), not the trained weights.
  meta = checkpoint.export_workdir(straight, str(tmp_path / 'export'))
  exported, _ = checkpoint.load_exported(str(tmp_path / 'export'))
  setup = train.build(_vit_config(digits_data_dir, **short))
  manager = checkpoint.Manager(straight, setup.config)
  state, step, _ = manager.restore_or(train.create_state(setup, train.make_mesh(), 0))
  manager.close()
  assert meta['ema'] and step == 6
  jax.tree.map(np.testing.assert_array_equal, exported['params'],
               jax.device_get(state.ema['params']['student']))
  assert not np.array_equal(jax.tree.leaves(exported['params'])[0],
                            jax.tree.leaves(jax.device_get(state.params['student']))[0])


def test_a_checkpoint_without_ema_field_restores(tmp_path, digits_data_dir, monkeypatch):
  """A checkpoint written before TrainState had `ema` resumes exactly with EMA off; with EMA
  turned on (allow_config_change) the average starts from the restored weights."""
  config = lambda steps, **kw: _digits_short(digits_data_dir, steps, **kw)
  straight, old = str(tmp_path / 'straight'), str(tmp_path / 'old')
  train.train_and_evaluate(config(4), straight)
  save = checkpoint.Manager.save

  def old_format_save(self, step, state, setup, pending_metrics=()):
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
              if f.name != 'ema'}
    return save(self, step, fields, setup, pending_metrics)
  monkeypatch.setattr(checkpoint.Manager, 'save', old_format_save)
  train.train_and_evaluate(config(2), old)
  monkeypatch.setattr(checkpoint.Manager, 'save', save)
  train.train_and_evaluate(config(4), old)
  assert _records(old) == _records(straight)
  train.train_and_evaluate(config(6, **{'ema.decay': 0.5, 'allow_config_change': True}), old)
  assert ('student_ema', 6) in [(r.get('model'), r['step']) for r in _records(old)]


def _digits_short(data_dir, steps, **overrides):
  config = load_recipe()
  with config.unlocked():
    config.data_dir = data_dir
    config.num_train_steps = steps
    config.checkpoint_every_steps = 2
    config.log_every_steps = 2
    config.eval_every_epochs = 2 / 18  # 18 steps per epoch: every 2 steps
    _override(config, overrides)
  return config


def test_keys_added_after_a_run_started_are_no_change_at_their_default():
  defaults = json.loads(config_base.base_config().to_json_best_effort())
  now = json.loads(config_base.base_config().to_json_best_effort())
  saved = {k: v for k, v in now.items() if k not in ('mixup', 'ema')}
  assert workdir_lib.config_changes(saved, now, defaults) == ([], [])
  now['ema']['decay'] = 0.9
  assert workdir_lib.config_changes(saved, now, defaults)[0] == ['ema.decay: 0.0 -> 0.9']


def test_eight_devices_give_the_same_steps_as_one_with_mixup_drop_path_and_ema(digits_data_dir):
  env = conftest.cli_env()
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  out = subprocess.run([sys.executable, os.path.join(conftest.ROOT, 'tests', 'sharding_check.py'),
                        digits_data_dir, 'aug'], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['num_devices'] == 8
  for one, many in zip(result['one'], result['many'], strict=True):
    assert one.keys() == many.keys() and 'grad_norm' in one
    for key in one:
      np.testing.assert_allclose(many[key], one[key], rtol=2e-5, err_msg=key)
  assert result['max_abs_variable_diff'] < 1e-5
  assert result['replicas_agree']
