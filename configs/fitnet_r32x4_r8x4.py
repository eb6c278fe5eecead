r"""FitNet (Romero et al. 2015): layer2 hint through a trainable ConvReg regressor; CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/fitnet_r32x4_r8x4.py --workdir=/tmp/fitnet_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a CPU.
Loss: CE + 100 * MSE(ConvReg(F_s), F_t) at layer2 (mdistiller FITNET defaults;
docs/methods.md#fitnet).
Expected top-1: 73.50 (CRD paper's CIFAR-100 table, as reprinted in later work; not yet reproduced).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.fitnet = dict(weight=100.0, student_tap='layer2', teacher_tap='layer2')
  return config_base.lock_config(c)
