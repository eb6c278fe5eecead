r"""KD with logit standardization (Sun et al., CVPR 2024), CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/kd_ls_r32x4_r8x4.py --workdir=/tmp/kd_ls_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs; mdistiller's CIFAR schedule). `:smoke` runs 8 steps on
a CPU (needs cifar100 in data_dir; only smoke may use a random teacher).
Loss: 0.1 * CE + 9 * KD(T=2, standardize=True): the reference's README command
`tools/train.py --cfg configs/cifar100/kd/resnet32x4_resnet8x4.yaml --logit-stand --base-temp 2
--kd-weight 9` (sunshangquan/logit-standardization-KD; CE weight 0.1 from its
`mdistiller/engine/cfg.py`; docs/methods.md#kd).
Expected top-1: 76.62 (logit-standardization-KD README, KD+Ours). Its log of the run,
`logs/KD/kd,resnet32x4,resnet8x4,2,9.txt`, ends with best_acc 76.66. Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=0.1)
  c.losses.kd = dict(weight=9.0, temperature=2.0, standardize=True)
  return config_base.lock_config(c)
