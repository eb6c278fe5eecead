"""The CIFAR-100 half of the model zoo: mdistiller / RepDistiller's models, named as mdistiller
names them (lowercased). ``CIFAR_MODELS`` is merged into ``kdjax.models.MODELS``.

Families: ``cifar_resnet`` (resnet8 .. resnet110, resnet8x4, resnet32x4), ``wrn``, ``vgg``
(with BN), ``mobilenetv2_cifar`` (mdistiller's ``mobile_half``), ``shufflenet`` (V1, V2) and
``cifar_resnetv2`` (mdistiller's CIFAR ResNet50). Each module's docstring says which layers
its ``stage1..stage4`` taps are.
"""

from kdjax.models import cifar_resnet
from kdjax.models import cifar_resnetv2
from kdjax.models import mobilenetv2_cifar
from kdjax.models import shufflenet
from kdjax.models import vgg
from kdjax.models import wrn

CIFAR_MODELS = {
    'resnet8': cifar_resnet.resnet8,
    'resnet14': cifar_resnet.resnet14,
    'resnet20': cifar_resnet.resnet20,
    'resnet32': cifar_resnet.resnet32,
    'resnet44': cifar_resnet.resnet44,
    'resnet56': cifar_resnet.resnet56,
    'resnet110': cifar_resnet.resnet110,
    'resnet8x4': cifar_resnet.resnet8x4,
    'resnet32x4': cifar_resnet.resnet32x4,
    'wrn_16_1': wrn.wrn_16_1,
    'wrn_16_2': wrn.wrn_16_2,
    'wrn_40_1': wrn.wrn_40_1,
    'wrn_40_2': wrn.wrn_40_2,
    'vgg8': vgg.vgg8,
    'vgg11': vgg.vgg11,
    'vgg13': vgg.vgg13,
    'vgg16': vgg.vgg16,
    'vgg19': vgg.vgg19,
    'mobilenetv2_cifar': mobilenetv2_cifar.mobilenetv2_cifar,
    'shufflev1': shufflenet.shufflev1,
    'shufflev2': shufflenet.shufflev2,
    'resnet50_cifar': cifar_resnetv2.resnet50_cifar,
}
