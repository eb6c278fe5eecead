r"""SSLD, simple semi-supervised label distillation (PaddleClas), ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/ssld_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34 \
      --config.input.unlabeled.dataset=<tfds name> --config.input.unlabeled.split=train \
      --config.input.unlabeled.fraction=0.5

Hardware: 8 GPUs or a TPU pod slice. `:smoke`: 4 steps at 64x64 on a CPU, half of each batch
from an unlabeled source (the validation split with its labels hidden, only to exercise the path).
Loss: the eps-smoothed symmetric KL between student and frozen teacher, weight 1, and no CE:
labels are never read, so any image source can be mixed in with `input.unlabeled` (PaddleClas
`PPLCNet_x2_5_ssld.yaml`; docs/methods.md#ssld). PaddleClas' SSLD mines ~4M ImageNet-22k images;
without such a source this recipe distils on ImageNet-1k train alone.
Expected top-1: not checked here; the SSLD numbers are for PaddleClas' own teachers and students.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, arg = recipes.imagenet(arg)
  c.losses.ssld = dict(weight=1.0)
  if arg == 'smoke':
    c.input.unlabeled.update(split='validation', fraction=0.5)
  return config_base.lock_config(c)
