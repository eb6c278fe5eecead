r"""PEFD, projector ensemble feature distillation, on the pooled feature; ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/pefd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir, export, or .safetensors

Hardware: 8 GPUs or a TPU pod slice (mdistiller's ImageNet schedule, global batch 512).
`:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir).
Loss: CE + 25 * mean(1 - cos(ensemble(h_s), h_t)) (official `scripts/run_imagenet.sh`;
docs/methods.md#pefd).
Expected top-1: not checked here (see the PEFD paper's ImageNet table).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.pefd = dict(weight=25.0, tap='pooled', num_projectors=3)
  return config_base.lock_config(c)
