r"""MLKD with logit standardization (Sun et al., CVPR 2024), ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/mlkd_ls_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir or export folder

Hardware: 8 GPUs or a TPU pod slice (global batch 512, 100 epochs; every network runs on two
views of each image). `:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir).
Loss: 0.5 * (CE(weak) + CE(strong)) + 9 * MLKD(T=2, standardize=True) over groups of 64: the
reference's `--logit-stand --base-temp 2 --kd-weight 9` (its README's flags for every method)
applied to MLKD's ImageNet recipe (configs/mlkd_r34_r18.py: Jin-Ying/Multi-Level-Logit-
Distillation `configs/imagenet/r34_r18/kd_ours.yaml`, SGD lr 0.1 at batch 512); the LS code path
is sunshangquan/logit-standardization-KD `mdistiller/distillers/MLKD.py`; docs/methods.md#mlkd.
Expected top-1: no number for MLKD+LS on ImageNet is stated in the reference repository's README;
the paper's ImageNet table was not checked here. For comparison, MLKD alone: 71.90 (MLKD paper,
see configs/mlkd_r34_r18.py). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, arg = recipes.imagenet(arg)
  c.optimizer.learning_rate = 0.1
  recipes.mlkd_terms(c, arg, ce_weight=0.5, kd_weight=9.0, temperature=2.0, standardize=True)
  return config_base.lock_config(c)
