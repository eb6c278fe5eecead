"""The OFA-KD recipes (`recipes.ofa_pair`): OFAKD's settings per student kind, and CLI smokes.

Settings restated from Hao840/OFAKD @ f7bb896 `configs/{imagenet,cifar}/{cnn,vit_mlp}.yaml`
(per-GPU batch x 8 GPUs, lr not rescaled) and its README's eps (1.5 ImageNet, 1.0 CIFAR-100), so
a recipe drifting from them fails here. Each recipe's docstring and smoke mode are also checked by
test_recipes.py::test_recipe_is_complete. Every `:smoke` was run through the CLI when the recipes
were written; the suite runs three of them (ImageNet: a CNN student under a Swin teacher at 224, a
DeiT student with the whole ViT recipe and its EMA; CIFAR-100: a CNN student), the others cost
~1-2 min each on 2 cores.
"""

import glob
import os

import pytest

import conftest
from kdjax import models
from kdjax import recipes

OFA = sorted(os.path.basename(p)[:-3]
             for p in glob.glob(os.path.join(conftest.ROOT, 'configs', 'ofa_*.py')))
SMOKED = ['ofa_swint_r18', 'ofa_convnextt_deitt', 'ofa_mixerb16_r18_c100']


def test_the_pairs_are_ofakds():
  imagenet = {n for n in OFA if not n.endswith('_c100')}
  assert imagenet == {'ofa_swint_r18', 'ofa_vits_r18', 'ofa_mixerb16_r18', 'ofa_convnextt_deitt',
                      'ofa_convnextt_resmlps12', 'ofa_r50_deitt'}
  assert len(OFA) - len(imagenet) == 10


@pytest.mark.parametrize('name', OFA)
def test_recipe_follows_ofakd(name):
  config, doc = conftest.load_recipe(name)
  cifar = name.endswith('_c100')
  assert config.dataset == ('cifar100' if cifar else 'imagenet2012')
  for model in (config.teacher.model, config.student.model):
    assert model in models.MODELS
  assert 'Expected top-1' in doc and config.teacher.model in doc
  ce, ofa = config.losses.ce, config.losses.ofa
  assert set(config.losses) == {'ce', 'ofa'}
  assert (ce.weight, ce.label_smoothing, ofa.weight, ofa.temperature) == (1.0, 0.1, 1.0, 1.0)
  assert ofa.eps == (1.0 if cifar else 1.5) and tuple(ofa.stages) == (1, 2, 3, 4)
  assert config.input.image_size == 224
  opt = config.optimizer
  if config.student.model in recipes.TOKEN_STUDENTS:
    assert tuple(ofa.student_taps) == ('block1', 'block3', 'block9', 'block11')
    assert config.batch_size == 1024 and config.num_epochs == 300
    assert (opt.name, opt.learning_rate, opt.weight_decay, opt.schedule) == (
        'adamw', 5e-4, 0.05, 'cosine')
    assert (opt.warmup_epochs, opt.warmup_learning_rate, opt.clip_grad_norm) == (20, 5e-7, 5.0)
    assert opt.min_learning_rate == (1e-5 if cifar else 1e-6)
    assert config.input.randaugment == 'rand-m9-mstd0.5-inc1'
    assert config.input.random_erasing == 0.25
    assert (config.mixup.mixup_alpha, config.mixup.cutmix_alpha) == (0.8, 1.0)
    assert config.ema.decay == (0.0 if cifar else 0.99996)
  else:
    assert tuple(ofa.student_taps) == ()
    assert (opt.name, opt.momentum, opt.warmup_epochs, opt.warmup_learning_rate) == (
        'sgd', 0.9, 3, 1e-4)
    assert config.input.randaugment == '' and config.mixup.mixup_alpha == 0.0
    if cifar:
      assert (config.batch_size, config.num_epochs, opt.learning_rate, opt.weight_decay) == (
          1024, 300, 0.05, 2e-3)
      assert (opt.schedule, opt.min_learning_rate, ofa.branch_weight) == ('cosine', 1e-3, 0.1)
    else:
      assert (config.batch_size, config.num_epochs, opt.learning_rate, opt.weight_decay) == (
          512, 100, 0.1, 1e-4)
      assert (opt.schedule, tuple(opt.decay_epochs), ofa.branch_weight) == (
          'step', (30, 60, 90), 1.0)
  assert opt.lr_base_batch_size == 0  # OFAKD does not rescale its lr with the batch
  if cifar:  # Upsampled to 224 as OFAKD's timm transforms do.
    assert config.input.train_augment == 'random_resized_crop_flip'
    assert config.input.eval_preprocess == 'bicubic_resize_center_crop'
  else:
    assert config.input.train_augment == 'inception_crop_flip'


@pytest.mark.slow
@pytest.mark.parametrize('name', SMOKED)
def test_ofa_recipe_smoke(tmp_path, imagenet_data_dir, cifar_data_dir, name):
  data_dir = cifar_data_dir if name.endswith('_c100') else imagenet_data_dir
  proc = conftest.run_cli('kdjax.main', f'--config=configs/{name}.py:smoke',
                          f'--workdir={tmp_path}', f'--config.data_dir={data_dir}', timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'connectors (trained, never exported): ofa' in proc.stderr
