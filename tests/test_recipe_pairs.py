"""The CIFAR-100 KD / DKD benchmark-pair recipes (`recipes.cifar_pair`), their teacher recipes and
the ImageNet ResNet-50 -> MobileNetV1 recipes.

`PAIRS` restates mdistiller's per-pair settings (its `configs/cifar100/dkd/<yaml>.yaml` at a08d46f:
DKD beta, and lr 0.01 for ShuffleNet / MobileNet-V2 students) so that a recipe drifting from them
fails here. Every recipe's docstring, smoke mode and losses are also checked by
test_recipes.py::test_recipe_is_complete.
"""

import os

import numpy as np
import pytest

import conftest
from kdjax import methods
from kdjax import models
from kdjax import recipes

# tag: (teacher, student, teacher recipe, DKD beta, learning rate)
PAIRS = {
    'wrn40_2_wrn16_2': ('wrn_40_2', 'wrn_16_2', 'train_wrn40_2', 6.0, 0.05),
    'wrn40_2_wrn40_1': ('wrn_40_2', 'wrn_40_1', 'train_wrn40_2', 6.0, 0.05),
    'res56_res20': ('resnet56', 'resnet20', 'train_res56', 2.0, 0.05),
    'res110_res32': ('resnet110', 'resnet32', 'train_res110', 2.0, 0.05),
    'vgg13_vgg8': ('vgg13', 'vgg8', 'train_vgg13', 6.0, 0.05),
    'vgg13_mv2': ('vgg13', 'mobilenetv2_cifar', 'train_vgg13', 6.0, 0.01),
    'res50_mv2': ('resnet50_cifar', 'mobilenetv2_cifar', 'train_res50_cifar', 8.0, 0.01),
    'res32x4_shuv1': ('resnet32x4', 'shufflev1', 'train_r32x4', 8.0, 0.01),
    'res32x4_shuv2': ('resnet32x4', 'shufflev2', 'train_r32x4', 8.0, 0.01),
    'wrn40_2_shuv1': ('wrn_40_2', 'shufflev1', 'train_wrn40_2', 8.0, 0.01),
}
RECIPES = [f'{m}_{tag}' for tag in PAIRS for m in ('kd', 'dkd')]
# In-process 2-step smoke runs of a representative few: KD and DKD, lr 0.05 and 0.01, DKD beta 2
# and 8, four teacher and four student families. All 20 take ~25-125 s each on 2 shared cores
# (~12 min for half of them), so the rest are covered by the checks below only (their models'
# full-size train steps are in test_models_cifar.py, also slow-marked).
SMOKED = ['kd_vgg13_vgg8', 'kd_wrn40_2_wrn16_2', 'dkd_res56_res20', 'dkd_res32x4_shuv1']


def _split(name):
  method, tag = name.split('_', 1)
  return method, tag


@pytest.mark.parametrize('name', RECIPES)
def test_pair_recipe_matches_mdistiller(name):
  method, tag = _split(name)
  teacher, student, teacher_recipe, beta, lr = PAIRS[tag]
  for arg in ('', 'smoke'):
    config, doc = conftest.load_recipe(name, arg)
    assert (config.teacher.model, config.student.model) == (teacher, student)
    for model in (teacher, student):
      assert model in models.MODELS, model
    methods.build_terms(config.losses, batch_size=config.batch_size)
    assert config.dataset == 'cifar100'
    assert config.optimizer.learning_rate == lr
    assert set(config.losses) == {'ce', method}
    if method == 'kd':
      assert (config.losses.ce.weight, config.losses.kd.weight) == (0.1, 0.9)
      assert config.losses.kd.temperature == 4.0
    else:
      dkd = config.losses.dkd
      assert (config.losses.ce.weight, dkd.weight, dkd.alpha, dkd.beta) == (1.0, 1.0, 1.0, beta)
      assert (dkd.temperature, dkd.warmup_epochs) == (4.0, 20)
    assert config.smoke == (arg == 'smoke')
  # The docstring names the teacher recipe, whose workdir is the teacher checkpoint.
  assert f'a kdjax workdir of configs/{teacher_recipe}.py' in doc
  teacher_config, _ = conftest.load_recipe(teacher_recipe)
  assert teacher_config.student.model == teacher and not teacher_config.teacher.model
  assert set(teacher_config.losses) == {'ce'}


def test_every_pair_recipe_is_listed_here():
  on_disk = {f[:-3] for f in os.listdir(os.path.join(conftest.ROOT, 'configs'))
             if f.endswith('.py') and f.split('_', 1)[0] in ('kd', 'dkd')}
  pair_like = {n for n in on_disk if n.split('_', 1)[1] in PAIRS}
  assert pair_like == set(RECIPES)


def test_cifar_pair_reproduces_the_r32x4_r8x4_recipes():
  """The helper gives exactly the hand-written reference recipes on their own pair."""
  from kdjax import config_base  # pylint: disable=g-import-not-at-top
  for method in ('kd', 'dkd'):
    for arg in ('', 'smoke'):
      expected, _ = conftest.load_recipe(f'{method}_r32x4_r8x4', arg)
      got = config_base.lock_config(
          recipes.cifar_pair(arg, method, teacher='resnet32x4', student='resnet8x4'))
      assert got.to_dict() == expected.to_dict(), (method, arg)


def test_cifar_pair_rejects_an_unknown_method():
  with pytest.raises(ValueError, match='kd'):
    recipes.cifar_pair('', 'dist', teacher='resnet56', student='resnet20')


@pytest.mark.parametrize('name', ['kd_r50_mv1', 'dkd_r50_mv1'])
def test_r50_mv1_recipes(name):
  method, _ = _split(name)
  for arg in ('', 'smoke'):
    config, doc = conftest.load_recipe(name, arg)
    assert (config.teacher.model, config.student.model) == ('resnet50', 'mobilenetv1')
    assert {'resnet50', 'mobilenetv1'} <= set(models.MODELS)
    methods.build_terms(config.losses, batch_size=config.batch_size)
    assert config.dataset == 'imagenet2012' and set(config.losses) == {'ce', method}
    assert config.losses[method].temperature == 1.0
  if method == 'kd':
    assert (config.losses.ce.weight, config.losses.kd.weight) == (0.5, 0.5)
  else:
    assert (config.losses.dkd.alpha, config.losses.dkd.beta) == (1.0, 2.0)
    assert config.losses.dkd.warmup_epochs == 0
  assert 'resnet50.tv_in1k' in doc


@pytest.mark.slow
@pytest.mark.parametrize('name', SMOKED)
def test_pair_recipe_trains_two_steps(cifar_data_dir, name):
  method, _ = _split(name)
  config, _ = conftest.load_recipe(name, 'smoke')
  with config.unlocked():
    config.data_dir = cifar_data_dir
  run = conftest.Run(config, seed=config.seed)
  for _ in range(2):
    metrics = run.step()
    assert np.isfinite(float(metrics['loss'])), metrics
    assert np.isfinite(float(metrics[f'loss/{method}'])), metrics
    assert float(metrics[f'loss/{method}']) >= 0
