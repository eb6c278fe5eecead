r"""OFA-KD, CIFAR-100 at 224x224: ViT-S/16 -> MobileNetV2 (docs/methods.md#ofa).

  python -m kdjax.main --config=configs/ofa_vits_mv2_c100.py --workdir=W \
      --config.teacher.checkpoint=TEACHER

TEACHER: weights of `vit_small_patch16_224` (docs/methods.md#ofa-teachers). OFAKD's CNN-student
recipe for CIFAR-100 (`recipes.ofa_pair`), eps 1.0.
Hardware: 8 GPUs or a TPU slice (global batch 1,024, 300 epochs); `:smoke` runs on a CPU.
Expected top-1: teacher 92.04 (OFAKD issue #22); student alone 73.68, KD 72.77, OFA 78.45 (quoted by
two later papers: unverified). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  return config_base.lock_config(recipes.ofa_pair(
      arg, dataset='cifar100', teacher='vit_small_patch16_224',
      student='mobilenetv2_100', eps=1.0))
