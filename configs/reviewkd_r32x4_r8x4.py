r"""ReviewKD (Chen et al., CVPR 2021), CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/reviewkd_r32x4_r8x4.py --workdir=/tmp/reviewkd_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a CPU.
Loss: CE + min(epoch / 20, 1) * 5 * HCL, student post-ReLU stages + pooled against teacher
pre-ReLU stages + pooled (mdistiller `configs/cifar100/reviewkd.yaml`, official `reviewKD.sh`;
docs/methods.md#reviewkd). Warm-up uses the 1-based epoch (mdistiller); the official code is
0-based. Expected top-1: not checked here (see the ReviewKD paper's CIFAR-100 table).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.reviewkd = dict(weight=5.0, warmup_epochs=20,
                           student_taps=('layer1', 'layer2', 'layer3', 'pooled'),
                           teacher_taps=('layer1_pre', 'layer2_pre', 'layer3_pre', 'pooled'))
  return config_base.lock_config(c)
