r"""OFA-KD (Hao et al., NeurIPS 2023), ImageNet, ViT-S/16 -> ResNet-18.

  python -m kdjax.main --config=configs/ofa_vits_r18.py --workdir=W \
      --config.teacher.checkpoint=TEACHER

Teacher `vit_small_patch16_224`: timm's ImageNet weights of `vit_small_patch16_224` saved as
.safetensors (`timm.create_model('vit_small_patch16_224', pretrained=True)`, then
`safetensors.torch.save_file(model.state_dict(), 't.safetensors')`), or a kdjax workdir or export of
the same model. Student `resnet18` from scratch, OFAKD's CNN-student recipe
for this dataset (`kdjax.recipes.ofa_pair`, docs/methods.md#ofa): CE with label smoothing 0.1 +
OFA (eps 1.5, the value OFAKD's README uses on ImageNet; the paper tunes eps per pair
and its repository does not list them) on the logits and on branches from stages 1-4.
Hardware: 8 GPUs or a TPU pod slice (global batch 512, 100 epochs). `:smoke`: 4 steps of batch 8 on
a CPU (needs imagenet2012 prepared in data_dir).
Expected top-1: not found in a source stored here (OFAKD publishes no ImageNet table in its
repository). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.ofa_pair(arg, dataset='imagenet2012', teacher='vit_small_patch16_224',
                       student='resnet18', eps=1.5)
  return config_base.lock_config(c)
