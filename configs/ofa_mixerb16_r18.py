r"""OFA-KD, ImageNet: Mixer-B/16 -> ResNet-18 (docs/methods.md#ofa).

  python -m kdjax.main --config=configs/ofa_mixerb16_r18.py --workdir=W \
      --config.teacher.checkpoint=TEACHER

TEACHER: weights of `mixer_b16_224` (docs/methods.md#ofa-teachers). OFAKD's CNN-student recipe for
ImageNet (`recipes.ofa_pair`), eps 1.5.
Hardware: 8 GPUs or a TPU slice (global batch 512, 100 epochs); `:smoke` runs on a CPU.
Expected top-1: not found in a source stored here (OFAKD publishes no ImageNet table in its
repository). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  return config_base.lock_config(recipes.ofa_pair(
      arg, dataset='imagenet2012', teacher='mixer_b16_224',
      student='resnet18', eps=1.5))
