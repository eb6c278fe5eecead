"""The model zoo: a name -> constructor registry.

Every model is a Flax Linen module with ``__call__(x, train=False)`` returning float32
logits ``[B, num_classes]`` from NHWC input, float32 params, an optional compute
``dtype``, and ``tap_aliases()`` (friendly tap name -> Flax intermediates path).
"""

import inspect

import jax.numpy as jnp

from kdjax.errors import KdjaxError
from kdjax.models import cifar_resnet, resnet, small
from kdjax.models.cifar import CIFAR_MODELS
from kdjax.models.imagenet import IMAGENET_MODELS

MODELS = {
    'resnet18': resnet.resnet18,
    'resnet34': resnet.resnet34,
    'resnet50': resnet.resnet50,
    'resnet20': cifar_resnet.resnet20,
    'resnet56': cifar_resnet.resnet56,
    'resnet110': cifar_resnet.resnet110,
    'resnet8x4': cifar_resnet.resnet8x4,
    'resnet32x4': cifar_resnet.resnet32x4,
    'digits_cnn': small.digits_cnn,
    'mlp32': small.mlp32,
    'cnn4': small.cnn4,
    'digits_vit': small.digits_vit,
    'digits_mixer': small.digits_mixer,
}
MODELS.update(CIFAR_MODELS)
MODELS.update(IMAGENET_MODELS)


def model_names():
  """The registered model names, sorted."""
  return sorted(MODELS)


def supported_options(name):
  """The training options model ``name``'s constructor takes (e.g. ``drop_path_rate``)."""
  params = inspect.signature(MODELS[name]).parameters
  return sorted(set(params) - {'num_classes', 'dtype'})


def get_model(name, *, num_classes, dtype=jnp.float32, config_key='model', **options):
  """Builds model ``name`` with ``num_classes`` outputs and compute ``dtype``.

  ``config_key`` names the config entry the name came from (e.g. 'student.model'),
  for the error message. ``options`` are training options only some models take, e.g.
  ``drop_path_rate`` (stochastic depth: ViT/DeiT, Swin, ConvNeXt, Mixer/ResMLP); an option a
  model does not take is ignored when it is falsy (0, its off value) and a KdjaxError otherwise.
  Raises KdjaxError for an unknown name or a bad class count.
  """
  if name not in MODELS:
    raise KdjaxError(
        f'unknown model {name!r} ({config_key}); valid models: {", ".join(model_names())}'
    )
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise KdjaxError(
        f'num_classes must be a positive integer for model {name!r}, got {num_classes!r}'
    )
  supported = supported_options(name)
  for key, value in list(options.items()):
    if key not in supported:
      if value:
        prefix = config_key.rsplit('.', 1)[0] + '.' if '.' in config_key else ''
        takers = [m for m in model_names() if key in supported_options(m)]
        raise KdjaxError(f'model {name!r} ({config_key}) does not support {key} '
                         f'({prefix}{key}={value!r}); set it to 0 or use a model that does: '
                         f'{", ".join(takers)}')
      del options[key]
  return MODELS[name](num_classes=num_classes, dtype=dtype, **options)
