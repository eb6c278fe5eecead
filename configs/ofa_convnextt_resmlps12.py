r"""OFA-KD, ImageNet: ConvNeXt-T -> ResMLP-S12 (docs/methods.md#ofa).

  python -m kdjax.main --config=configs/ofa_convnextt_resmlps12.py --workdir=W \
      --config.teacher.checkpoint=TEACHER

TEACHER: weights of `convnext_tiny` (docs/methods.md#ofa-teachers). OFAKD's ViT/MLP-student recipe
for ImageNet (`recipes.ofa_pair`), eps 1.5.
Hardware: 8 GPUs or a TPU slice (global batch 1,024, 300 epochs); `:smoke` runs on a CPU.
Expected top-1: student alone 76.65; OFA 77.53 (quoted from the paper by a later paper: unverified).
Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  return config_base.lock_config(recipes.ofa_pair(
      arg, dataset='imagenet2012', teacher='convnext_tiny',
      student='resmlp_12_224', eps=1.5))
