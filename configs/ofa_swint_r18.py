r"""OFA-KD, ImageNet: Swin-T -> ResNet-18 (docs/methods.md#ofa).

  python -m kdjax.main --config=configs/ofa_swint_r18.py --workdir=W \
      --config.teacher.checkpoint=TEACHER

TEACHER: weights of `swin_tiny_patch4_window7_224` (docs/methods.md#ofa-teachers). OFAKD's
CNN-student recipe for ImageNet (`recipes.ofa_pair`), eps 1.5.
Hardware: 8 GPUs or a TPU slice (global batch 512, 100 epochs); `:smoke` runs on a CPU.
Expected top-1: student alone 69.75; OFA 71.85 (two later papers quote 71.85 and 71.76: unverified).
Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  return config_base.lock_config(recipes.ofa_pair(
      arg, dataset='imagenet2012', teacher='swin_tiny_patch4_window7_224',
      student='resnet18', eps=1.5))
