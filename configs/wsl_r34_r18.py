r"""WSL, weighted soft labels (Zhou et al., ICLR 2021), ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/wsl_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34

Hardware: 8 GPUs or a TPU pod slice. `:smoke`: 4 steps at 64x64 on a CPU.
Loss: CE + 2.5 * WSL(T=2) (PaddleClas `resnet34_distill_resnet18_wsl.yaml`, official code T=2,
alpha=2.5; docs/methods.md#wsl). The reference runs its teacher with train-mode BatchNorm; kdjax
uses inference mode (docs/methods.md#teacher-handling). Expected top-1: not checked here; see
the WSL paper's ImageNet table.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.wsl = dict(weight=2.5, temperature=2.0)
  return config_base.lock_config(c)
