"""The method registry: hyperparameter groups, docs coverage, and methods from a user's file."""

import importlib.util
import json
import os
import subprocess
import textwrap

import pytest

import conftest
from kdjax import methods
from kdjax import train
from kdjax.errors import KdjaxError


def test_adapters_receive_only_their_losses_hyperparameters():
  terms = {t.name: t for t in methods.build_terms({
      'crd': dict(weight=0.8, dim=64), 'cc': dict(weight=0.02, gamma=0.5),
      'reviewkd': dict(weight=1.0), 'kd': dict(weight=1.0, temperature=2.0)}, batch_size=64)}
  assert terms['crd'].hparams == {}
  assert terms['crd'].connector_hparams == dict(dim=64, num_negatives=16384, temperature=0.07,
                                                momentum=0.5)
  assert terms['crd'].taps == {'tap': 'pooled'}
  assert terms['cc'].hparams == dict(gamma=0.5, p_order=2) and terms['cc'].group_size == 64
  assert terms['cc'].connector_hparams == {'dim': 128}
  assert terms['reviewkd'].hparams == {} and terms['reviewkd'].connector_hparams == {
      'max_mid_channels': 512}
  assert terms['kd'].hparams == {'temperature': 2.0, 'standardize': False}
  assert terms['kd'].group_size == 0


def test_logit_terms_pass_their_options_to_the_pure_losses():
  # LS on kd / dkd and NKD's hyperparameters reach kdjax.losses unchanged.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from kdjax import losses  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  s, t = (rng.normal(size=(4, 5)).astype(np.float32) for _ in range(2))
  y = np.array([0, 3, -1, 2], np.int32)
  terms = {x.name: x for x in methods.build_terms({
      'kd': dict(weight=9.0, temperature=2.0, standardize=True),
      'dkd': dict(weight=1.0, alpha=9.0, beta=72.0, temperature=2.0, standardize=True),
      'nkd': dict(weight=1.0, temperature=3.0, gamma=3.5)})}


  @jax.jit
  def values(s, t, y):
    got = {n: term({'student': {'logits': s}, 'teacher': {'logits': t}}, y)
           for n, term in terms.items()}
    want = {'kd': losses.kd(s, t, temperature=2.0, standardize=True),
            'dkd': losses.dkd(s, t, y, alpha=9.0, beta=72.0, temperature=2.0,
                              standardize=True),
            'nkd': losses.nkd(s, t, y, temperature=3.0, gamma=3.5)}
    return got, want, losses.kd(s, t, temperature=2.0)

  got, want, plain_kd = values(s, t, y)
  for name in terms:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-6)
  assert terms['nkd'].group_size == 0  # per-sample: no grouping
  assert abs(float(got['kd']) - float(plain_kd)) > 1e-3


def test_a_key_in_two_groups_is_refused():
  with pytest.raises(ValueError, match='declared twice'):
    methods.register(methods.Method(name='bad', loss=lambda x, t: 0.0, hparams={'t': 1.0},
                                    connector_hparams={'t': 2.0}))
  assert 'bad' not in methods.METHODS


def test_every_method_has_a_section_in_the_docs():
  with open(os.path.join(conftest.ROOT, 'docs', 'methods.md')) as f:
    headings = {line[3:].strip() for line in f if line.startswith('## ')}
  missing = sorted(set(methods.METHODS) - headings)
  assert not missing, f'docs/methods.md has no "## <name>" section for {missing}'


def test_the_project_points_at_no_document_outside_it():
  outside = ('ALGORITHMS' + '.md', 'DESIGN' + '.md')
  proc = subprocess.run(['git', 'grep', '-n', '-e', outside[0], '-e', outside[1]],
                        cwd=conftest.ROOT, capture_output=True, text=True)
  if proc.returncode not in (0, 1):  # not a git checkout (e.g. an sdist): walk the files
    pytest.skip('not a git checkout')
  assert proc.stdout == '', proc.stdout


USER_RECIPE = '''
"""A user's own recipe that defines and registers its own method (no kdjax file touched).

  python -m kdjax.main --config={path} --workdir=/tmp/run
"""
import jax.numpy as jnp

from kdjax import config_base, methods, recipes


def top1_margin(student_logits, teacher_logits, *, scale):
  """Pure loss: scale * mean squared gap between the student's and the teacher's top logit."""
  gap = jnp.max(student_logits, -1) - jnp.max(teacher_logits, -1)
  return scale * jnp.mean(gap ** 2)


methods.register(methods.Method(
    name='top1_margin', hparams=dict(scale=1.0),
    loss=lambda x, *, scale: top1_margin(*x.student, *x.teacher, scale=scale)))


def get_config(arg=None):
  c, arg = recipes.digits(arg)
  c.student.model = 'mlp32'
  c.teacher.model = 'digits_cnn'
  c.teacher.checkpoint = recipes.DIGITS_TEACHER
  c.losses.ce = dict(weight=1.0)
  c.losses.top1_margin = dict(weight=0.5, scale=2.0)
  return config_base.lock_config(c)
'''


def test_a_method_registered_in_a_users_recipe_file_trains(tmp_path, digits_data_dir):
  path = tmp_path / 'my_recipe.py'
  path.write_text(textwrap.dedent(USER_RECIPE).replace('{path}', str(path)))
  try:
    spec = importlib.util.spec_from_file_location('my_recipe', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config('smoke')
    assert config.losses.top1_margin.scale == 2.0  # declared and locked like a built-in method
    with pytest.raises(AttributeError):
      config.losses.top1_margin.scael = 1.0
    with config.unlocked():
      config.data_dir = digits_data_dir
      config.num_train_steps = 2
      config.log_every_steps = 1
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  finally:
    methods.METHODS.pop('top1_margin', None)
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    lines = [json.loads(line) for line in f]
  values = [line['loss/top1_margin'] for line in lines if 'loss/top1_margin' in line]
  assert len(values) == 2 and all(v >= 0 for v in values)
  with pytest.raises(KdjaxError, match="unknown method 'top1_margin'"):
    methods.build_terms({'top1_margin': dict(weight=1.0)})


def test_ls_and_nkd_terms_train_a_step(digits_data_dir):
  # In the trainer, on the few-labels digits batch (unlabeled rows, labels -1): KD with logit
  # standardization and NKD give finite terms and a finite update.
  import numpy as np  # pylint: disable=g-import-not-at-top
  config, _ = conftest.load_recipe('digits_kd', 'smoke')
  with config.unlocked():
    config.data_dir = digits_data_dir
    config.losses = {'ce': dict(weight=1.0),
                     'kd': dict(weight=9.0, temperature=2.0, standardize=True),
                     'nkd': dict(weight=1.0, temperature=3.0, gamma=3.5)}
  run = conftest.Run(config, seed=config.seed)
  metrics = run.step()
  assert all(np.isfinite(float(metrics[k])) for k in ('loss', 'loss/kd', 'loss/nkd'))
  assert float(metrics['loss/kd']) > 0 and float(metrics['loss/nkd']) > 0
