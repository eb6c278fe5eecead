r"""DKD with logit standardization (Sun et al., CVPR 2024), CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/dkd_ls_r32x4_r8x4.py --workdir=/tmp/dkd_ls_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs; mdistiller's CIFAR schedule). `:smoke` runs 8 steps on
a CPU.
Loss: CE + min(epoch / 20, 1) * DKD(alpha=9, beta=72, T=2, standardize=True): the reference's
README command `tools/train.py --cfg configs/cifar100/dkd/resnet32x4_resnet8x4.yaml --logit-stand
--base-temp 2 --kd-weight 9`, which multiplies DKD's alpha (1) and beta (8) by 9 and sets T = 2
(sunshangquan/logit-standardization-KD `tools/train.py`; CE weight 1 and warm-up 20 from its
`mdistiller/engine/cfg.py`; docs/methods.md#dkd).
Expected top-1: 77.01 (logit-standardization-KD README, DKD+Ours). Its log of the run,
`logs/DKD/dkd,resnet32x4,resnet8x4,2,9.txt`, ends with best_acc 77.14. Not yet reproduced with
kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.dkd = dict(weight=1.0, warmup_epochs=20, alpha=9.0, beta=72.0, temperature=2.0,
                      standardize=True)
  return config_base.lock_config(c)
