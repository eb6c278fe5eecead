r"""OFA-KD (Hao et al., NeurIPS 2023), CIFAR-100 at 224x224, ViT-S/16 -> MobileNetV2.

  python -m kdjax.main --config=configs/ofa_vits_mv2_c100.py --workdir=W \
      --config.teacher.checkpoint=TEACHER

Teacher `vit_small_patch16_224`: OFAKD's CIFAR-100 fine-tuned `vit_small_patch16_224` (its GitHub
release `checkpoint-cifar100`, a timm state dict: `.pth` with torch installed, or re-saved as
.safetensors), or a kdjax workdir of the same model trained on cifar100 at 224. Student
`mobilenetv2_100` from scratch, OFAKD's CNN-student recipe
for this dataset (`kdjax.recipes.ofa_pair`, docs/methods.md#ofa): CE with label smoothing 0.1 +
OFA (eps 1.0, the value OFAKD's README uses on CIFAR-100; the paper tunes eps per pair
and its repository does not list them) on the logits and on branches from stages 1-4.
Hardware: 8 GPUs or a TPU slice (global batch 1,024, 300 epochs, 224x224 inputs). `:smoke`: 4 steps
of batch 8 on a CPU (needs cifar100 prepared in data_dir).
Expected top-1: teacher 92.04 (OFAKD issue #22); student alone 73.68, KD 72.77, OFA 78.45 (quoted by
two later papers: unverified). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.ofa_pair(arg, dataset='cifar100', teacher='vit_small_patch16_224',
                       student='mobilenetv2_100', eps=1.0)
  return config_base.lock_config(c)
