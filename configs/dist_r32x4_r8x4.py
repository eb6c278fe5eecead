r"""DIST (Huang et al., NeurIPS 2022), CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/dist_r32x4_r8x4.py --workdir=/tmp/dist_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a CPU.
Loss: CE + 2 * DIST(beta=1, gamma=1, T=4), intra-class term over groups of 64 (the reference's
per-GPU batch) (hunto `configs/strategies/distill/dist_cifar.yaml`, `kd: dist_t4`;
docs/methods.md#dist). Expected top-1: not checked here; see the DIST paper's CIFAR-100 table.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.dist = dict(weight=2.0, beta=1.0, gamma=1.0, temperature=4.0,
                       group_size=c.batch_size)
  return config_base.lock_config(c)
