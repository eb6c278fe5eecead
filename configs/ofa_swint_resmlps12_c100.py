r"""OFA-KD, CIFAR-100 at 224x224: Swin-T -> ResMLP-S12 (docs/methods.md#ofa).

  python -m kdjax.main --config=configs/ofa_swint_resmlps12_c100.py --workdir=W \
      --config.teacher.checkpoint=TEACHER

TEACHER: weights of `swin_tiny_patch4_window7_224` (docs/methods.md#ofa-teachers). OFAKD's
ViT/MLP-student recipe for CIFAR-100 (`recipes.ofa_pair`), eps 1.0.
Hardware: 8 GPUs or a TPU slice (global batch 1,024, 300 epochs); `:smoke` runs on a CPU.
Expected top-1: not found in a source stored here. Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  return config_base.lock_config(recipes.ofa_pair(
      arg, dataset='cifar100', teacher='swin_tiny_patch4_window7_224',
      student='resmlp_12_224', eps=1.0))
