r"""OFD, overhaul of feature distillation: 4 pre-ReLU stages with teacher-BN margins; ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/ofd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir, export, or .safetensors

Hardware: 8 GPUs or a TPU pod slice (mdistiller's ImageNet schedule, global batch 512).
`:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir).
Loss: CE + 1e-4 * sum_i L_i / 2^(4-i) (official `ImageNet/distiller.py`; docs/methods.md#ofd). The official
run uses SGD with Nesterov, batch 256, lr 0.1; this recipe keeps mdistiller's base schedule.
Expected top-1: not checked here (see the OFD paper's ImageNet table).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.ofd = dict(weight=1e-4, stages=(1, 2, 3, 4))
  return config_base.lock_config(c)
