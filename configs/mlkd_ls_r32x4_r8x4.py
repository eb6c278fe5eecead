r"""MLKD + logit standardization (Sun et al., CVPR 2024), CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/mlkd_ls_r32x4_r8x4.py --workdir=/tmp/mlkd_ls_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 480 epochs, two views per image). `:smoke` runs 8 steps on a CPU.
Loss: 0.1 * (CE(weak) + CE(strong)) + 9 * MLKD(T=2, standardize=True) over groups of 64, the
strong view FixMatch's RandAugment + Cutout; SGD lr 0.025 decayed x0.1 at epochs 150/180/210,
480 epochs (sunshangquan/logit-standardization-KD `configs/cifar100/mlkd/resnet32x4_resnet8x4.yaml`
run with `--logit-stand --base-temp 2 --kd-weight 9`, as its README says; its log of that run
shows 480 epochs; docs/methods.md#mlkd).
Expected top-1: 78.28 (logit-standardization-KD README, MLKD+Ours, resnet32x4 -> resnet8x4; its
log `logs/MLKD/mlkd,resnet32x4,resnet8x4,2,9.txt` ends with best_acc 78.28). Not yet reproduced
with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.optimizer.learning_rate = 0.025
  c.num_epochs = 480
  recipes.mlkd_terms(c, arg, ce_weight=0.1, kd_weight=9.0, temperature=2.0, standardize=True)
  return config_base.lock_config(c)
