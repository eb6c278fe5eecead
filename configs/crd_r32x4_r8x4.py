r"""CRD, contrastive representation distillation (Tian et al., ICLR 2020), CIFAR-100, r32x4 -> r8x4.

  python -m kdjax.main --config=configs/crd_r32x4_r8x4.py --workdir=/tmp/crd_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a
CPU, 64 negatives.
Loss: CE + 0.8 * CRD(d=128, 16,384 negatives, tau 0.07, momentum 0.5) on the pooled features
(RepDistiller `-a 0 -b 0.8`; docs/methods.md#crd). Difference from the reference: its CIFAR
sampler draws negatives without replacement from the other classes only; kdjax draws them
uniformly from all 50,000 rows with replacement (the reference's ImageNet sampler).
Expected top-1: not checked here (see the CRD paper's CIFAR-100 table).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.input.add_index = True
  c.losses.ce = dict(weight=1.0)
  c.losses.crd = dict(weight=0.8, dim=128, num_negatives=64 if c.smoke else 16384,
                      temperature=0.07, momentum=0.5)
  return config_base.lock_config(c)
