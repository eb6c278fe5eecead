"""The ImageNet half of the model zoo, named as timm names them (``docs/models.md``).

resnet18/34/50 are registered with the other ResNets in ``kdjax.models``; this adds resnet101,
mdistiller's MobileNetV1 and the timm models: MobileNetV2/V3, ViT/DeiT, Swin-T, ConvNeXt-T,
Mixer-B/16 and ResMLP-12. Each is a Flax Linen module with NHWC input, float32 params, a compute
``dtype``, float32 logits and ``tap_aliases()`` with the zoo-wide ``stage1`` .. ``stage4``,
``pooled``, ``logits`` (and ``tokens`` for token models); ``kdjax.torch_import`` loads timm's
(and, for the ResNets, torchvision's) state dicts into them.
"""

from kdjax.models import convnext
from kdjax.models import mlp_mixer
from kdjax.models import mobilenet
from kdjax.models import resnet
from kdjax.models import swin
from kdjax.models import vit

IMAGENET_MODELS = {
    'resnet101': resnet.resnet101,
    **mobilenet.MODELS,
    **vit.MODELS,
    **swin.MODELS,
    **convnext.MODELS,
    **mlp_mixer.MODELS,
}

# Parameter counts at 1000 classes, equal to the reference implementation's (timm 1.0.31's
# ``sum(p.numel() for p in timm.create_model(name).parameters())``; mobilenetv1: mdistiller's
# ``MobileNetV1()``; resnet18..101: torchvision's, the same as timm's).
PARAM_COUNTS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'mobilenetv1': 4_231_976,
    'mobilenetv2_100': 3_504_872,
    'mobilenetv3_large_100': 5_483_032,
    'mobilenetv3_small_100': 2_542_856,
    'deit_tiny_patch16_224': 5_717_416,
    'deit_small_patch16_224': 22_050_664,
    'vit_small_patch16_224': 22_050_664,
    'vit_base_patch16_224': 86_567_656,
    'swin_tiny_patch4_window7_224': 28_288_354,
    'convnext_tiny': 28_589_128,
    'mixer_b16_224': 59_880_472,
    'resmlp_12_224': 15_350_872,
}
