r"""DML, deep mutual learning (PaddleClas joint form): two ResNet-18 peers trained together.

  python -m kdjax.main --config=configs/dml_r18_r18.py --workdir=W

Hardware: 8 GPUs or a TPU pod slice. `:smoke`: 4 steps at 64x64 on a CPU. No teacher.
Loss: CE(student) + CE(peer) + DML(student, peer), each weight 1; both networks trainable in one
step with one optimizer, both evaluated; `export` names the exported one (the student)
(PaddleClas `PPLCNet_x2_5_dml.yaml`: cosine lr 0.4 at batch 1024 with 5 warm-up epochs, 100
epochs; docs/methods.md#dml). Weight decay 1e-4 (PaddleClas uses 4e-5 for its light PPLCNet peers).
Expected top-1: not checked here for ResNet-18 peers.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet_peers(arg)
  return config_base.lock_config(c)
