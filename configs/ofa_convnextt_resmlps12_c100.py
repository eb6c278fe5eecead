r"""OFA-KD, CIFAR-100 at 224x224: ConvNeXt-T -> ResMLP-S12 (docs/methods.md#ofa).

  python -m kdjax.main --config=configs/ofa_convnextt_resmlps12_c100.py --workdir=W \
      --config.teacher.checkpoint=TEACHER

TEACHER: weights of `convnext_tiny` (docs/methods.md#ofa-teachers). OFAKD's ViT/MLP-student recipe
for CIFAR-100 (`recipes.ofa_pair`), eps 1.0.
Hardware: 8 GPUs or a TPU slice (global batch 1,024, 300 epochs); `:smoke` runs on a CPU.
Expected top-1: student alone 66.56, KD 72.25 (quoted by a later paper: unverified); OFA quoted as
81.22 and as 75.21 by two later papers (they disagree). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  return config_base.lock_config(recipes.ofa_pair(
      arg, dataset='cifar100', teacher='convnext_tiny',
      student='resmlp_12_224', eps=1.0))
