r"""MGD, masked generative distillation, on layer4; ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/mgd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir, export, or .safetensors

Hardware: 8 GPUs or a TPU pod slice (mdistiller's ImageNet schedule, global batch 512).
`:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir).
Loss: CE + 7e-5 * sum/B of (G(mask(F_s)) - F_t)^2 (official `res34_distill_res18_img.py`;
docs/methods.md#mgd).
Expected top-1: not checked here (see the MGD paper's ImageNet table).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.mgd = dict(weight=7e-5, tap='layer4', lambda_mgd=0.15)
  return config_base.lock_config(c)
