r"""AFD, Show, Attend and Distill (Ji et al., AAAI 2021), CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/afd_r32x4_r8x4.py --workdir=/tmp/afd_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a CPU.
Loss: CE + 0.9 * KD(T=4) + 200 * AFD with d = 128, every resnet8x4 block (block0..block2)
attended by every resnet32x4 block (block0..block14). Not a reference pair: the weights are the
official code's CIFAR defaults for WRN-40-2 -> WRN-16-2 (`main.py --alpha 0.9 --beta 200
--temperature 4`; docs/methods.md#afd), applied unchanged here.
Expected top-1: not checked here (no published number for this pair with these settings).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.kd = dict(weight=0.9, temperature=4.0)
  c.losses.afd = dict(weight=200.0, qk_dim=128,
                      student_taps=tuple(f'block{i}' for i in range(3)),
                      teacher_taps=tuple(f'block{j}' for j in range(15)))
  return config_base.lock_config(c)
