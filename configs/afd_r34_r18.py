r"""AFD, Show, Attend and Distill (Ji et al., AAAI 2021), ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/afd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir, export, or .safetensors

Hardware: 8 GPUs or a TPU pod slice (mdistiller's ImageNet schedule, global batch 512; PaddleClas
trains AFD for 100 epochs, LR 0.1, step 30/60/90, wd 1e-4 with its own per-device batch).
`:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir).
Loss: CE + 0.9 * KD(T=4) + 50 * AFD, every ResNet-18 block (block0..block7) attended by every
ResNet-34 block (block0..block15), d = 128 (PaddleClas `resnet34_distill_resnet18_afd.yaml`;
docs/methods.md#afd). The AFD BatchNorm1d statistics are over the whole global batch.
Expected top-1: not checked here (see the AFD paper / PaddleClas model zoo).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.kd = dict(weight=0.9, temperature=4.0)
  c.losses.afd = dict(weight=50.0, qk_dim=128,
                      student_taps=tuple(f'block{i}' for i in range(8)),
                      teacher_taps=tuple(f'block{j}' for j in range(16)))
  return config_base.lock_config(c)
