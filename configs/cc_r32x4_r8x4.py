r"""CC, correlation congruence (Peng et al., ICCV 2019), RepDistiller form with embeddings; CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/cc_r32x4_r8x4.py --workdir=/tmp/cc_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a CPU.
Loss: CE + 0.02 * CC on trainable 128-d embeddings of the pooled features (RepDistiller;
docs/methods.md#cc).
Expected top-1: not checked here (see the CRD paper's CIFAR-100 table).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.cc = dict(weight=0.02, dim=128, tap='pooled', group_size=c.batch_size)
  return config_base.lock_config(c)
