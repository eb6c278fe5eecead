r"""UDML (PaddleClas): DML between two ResNet-18 peers plus an L2 pull between their layer3 features.

  python -m kdjax.main --config=configs/udml_r18_r18.py --workdir=W

Hardware: 8 GPUs or a TPU pod slice. `:smoke`: 4 steps at 64x64 on a CPU. No teacher.
Loss: CE(student) + CE(peer) + DML(student, peer) + mean (F_student - F_peer)^2 at layer3, every
weight 1 (PaddleClas `PPLCNet_x2_5_udml.yaml`; layer3 is kdjax's choice for ResNets, the
stride-16 stage like PPLCNet's `blocks5`; docs/methods.md#udml). Schedule as configs/dml_r18_r18.py.
Expected top-1: not checked here for ResNet-18 peers.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet_peers(arg)
  c.losses.udml = dict(weight=1.0, tap='layer3')
  return config_base.lock_config(c)
