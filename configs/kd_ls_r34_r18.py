r"""KD with logit standardization (Sun et al., CVPR 2024), ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/kd_ls_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir or export folder

Hardware: 8 GPUs or a TPU pod slice (global batch 512, lr 0.2 scaled with the batch, 100 epochs;
mdistiller's ImageNet schedule). `:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in
data_dir; only smoke may use a random teacher).
Loss: CE + 9 * KD(T=2, standardize=True): the reference's README command `tools/train.py --cfg
configs/imagenet/r34_r18/kd.yaml --logit-stand --base-temp 2 --kd-weight 9`
(sunshangquan/logit-standardization-KD; its kd.yaml has CE weight 1.0, where mdistiller's has 0.5;
docs/methods.md#kd).
Expected top-1: 71.45 (logit-standardization-KD log `logs/imagenet/r34_r18_kd_ours.txt`, best
epoch). The final epoch of that log has 71.26; the README states no ImageNet number. Not yet
reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.kd = dict(weight=9.0, temperature=2.0, standardize=True)
  return config_base.lock_config(c)
