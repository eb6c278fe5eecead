r"""CTKD (Li et al., AAAI 2023) on KD, CIFAR-100, resnet32x4 -> resnet8x4, the reference's recipe.

  python -m kdjax.main --config=configs/ctkd_r32x4_r8x4.py --workdir=/tmp/ctkd_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, SGD 0.05, x0.1 at 150/180/210, weight decay 5e-4).
`:smoke` runs 8 steps on a CPU.
Loss: 0.1 * CE + 0.9 * KD at CTKD's learned global temperature 1 + 20 sigmoid(theta), the
gradient reversal's lambda rising 0 -> 1 over the first 10 epochs by a cosine (zhengli97/CTKD
`scripts/run_cifar_distill.sh`: `--distill kd -r 0.1 -a 0.9 -b 0 --have_mlp 1 --mlp_name global
--cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10`, t_start 1 and t_end 20 by
default; docs/methods.md#ctkd). The logit-standardized variant:
`--config.losses.ctkd.standardize=True`.
Expected top-1: 73.39 (the CTKD row of the CIFAR-100 table in the README of
sunshangquan/logit-standardization-KD, resnet32x4 -> resnet8x4; KD alone 73.33 there).
Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=0.1)
  c.losses.ctkd = dict(weight=0.9, base='kd', min_temperature=1.0, temperature_span=20.0,
                       lambda_start=0.0, lambda_end=1.0, lambda_epochs=10.0)
  return config_base.lock_config(c)
