r"""OFA-KD, CIFAR-100 at 224x224: Mixer-B/16 -> ResNet-18 (docs/methods.md#ofa).

  python -m kdjax.main --config=configs/ofa_mixerb16_r18_c100.py --workdir=W \
      --config.teacher.checkpoint=TEACHER

TEACHER: weights of `mixer_b16_224` (docs/methods.md#ofa-teachers). OFAKD's CNN-student recipe for
CIFAR-100 (`recipes.ofa_pair`), eps 1.0.
Hardware: 8 GPUs or a TPU slice (global batch 1,024, 300 epochs); `:smoke` runs on a CPU.
Expected top-1: student alone 74.01 (OFAKD issue #14); OFA not found in a source stored here. Not
yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  return config_base.lock_config(recipes.ofa_pair(
      arg, dataset='cifar100', teacher='mixer_b16_224',
      student='resnet18', eps=1.0))
