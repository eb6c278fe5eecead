r"""KD (Hinton et al. 2015), ImageNet, ResNet-50 -> MobileNetV1, mdistiller's recipe.

  python -m kdjax.main --config=configs/kd_r50_mv1.py --workdir=W \
      --config.teacher.checkpoint=r50.safetensors   # torchvision's ResNet-50 weights, see below

Teacher: torchvision's ResNet-50 (IMAGENET1K_V1, 76.13 top-1 on torchvision's model card), the
teacher mdistiller loads. On a machine with PyTorch: `timm.create_model('resnet50.tv_in1k',
pretrained=True)`, then `safetensors.torch.save_file(model.state_dict(), 'r50.safetensors')`
(docs/design.md#teacher-checkpoints); a kdjax workdir or export of a `resnet50` works too.
Student: `mobilenetv1`, mdistiller's ImageNet MobileNetV1.
Hardware: 8 GPUs or a TPU pod slice (global batch 512, lr 0.2 scaled with the batch, 100 epochs).
`:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir; only smoke may use a random
teacher).
Loss: 0.5 * CE + 0.5 * KD(T=1) (mdistiller `configs/imagenet/r50_mv1/kd.yaml`, docs/methods.md#kd).
Expected top-1: 70.50 (mdistiller README, KD, ResNet50 -> MobileNet-V1; the DKD paper's ImageNet
table has student alone 68.87, teacher 76.16). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.teacher.model = 'resnet50'
  c.student.model = 'mobilenetv1'
  c.losses.ce = dict(weight=0.5)
  c.losses.kd = dict(weight=0.5, temperature=1.0)
  return config_base.lock_config(c)
