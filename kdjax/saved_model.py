"""A trained network as a TensorFlow SavedModel, through `jax.experimental.jax2tf`.

  python -m kdjax.export --workdir=DIR --output=PATH --format=saved_model

PATH is a SavedModel (load it with `tf.saved_model.load(PATH)`, TF Serving, or convert it to
TFLite) plus PATH/kdjax_export.json (the export metadata with `format: saved_model` and a
`serving` entry). Its signature `serving_default` takes `images`, float32 [N, S, S, C] already
preprocessed as the run evaluated (the metadata's `preprocess` entry; `kdjax.load(...).
preprocess(raw_images)` computes exactly that), for any N, and returns `logits` float32 [N, K].

The network is lowered by jax2tf's native serialization (StableHLO) with a symbolic batch
dimension, for the CPU, CUDA and TPU platforms; its weights are TF variables, not constants,
so large networks stay under the 2 GB graph limit.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import checkpoint
from kdjax import inference
from kdjax.errors import KdjaxError

SIGNATURE = 'serving_default'
PLATFORMS = ('cpu', 'cuda', 'tpu')


def serving_function(model, image_shape, platforms=PLATFORMS):
  """A TF function (variables, images [b, S, S, C] float32) -> logits [b, K] float32, the
  network in inference mode converted by jax2tf with a symbolic batch size b."""
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  dims = ', '.join(str(int(d)) for d in image_shape)
  return jax2tf.convert(
      lambda variables, images: model.apply(variables, images, train=False).astype(jnp.float32),
      polymorphic_shapes=[None, f'(b, {dims})'], with_gradient=False,
      native_serialization_platforms=tuple(platforms))


def save(variables, metadata, output, platforms=PLATFORMS):
  """Writes the network of an export (`variables`, `metadata`) as a SavedModel to `output`,
  with its kdjax_export.json; returns that metadata."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # Tracing and saving need no accelerator.
  image_shape = tuple(int(d) for d in metadata['image_shape'])
  convert = serving_function(inference.network(metadata), image_shape, platforms)
  module = tf.Module()
  module.weights = tf.nest.map_structure(tf.Variable, jax.tree.map(np.asarray, variables))
  serve = tf.function(lambda images: {'logits': convert(module.weights, images)},
                      autograph=False, input_signature=[
                          tf.TensorSpec((None,) + image_shape, tf.float32, name='images')])
  output = os.path.abspath(output)
  try:
    tf.saved_model.save(module, output, signatures={SIGNATURE: serve})
  except Exception as e:  # pylint: disable=broad-except  jax2tf lowering errors name the op.
    raise KdjaxError(f"{metadata['model']} could not be converted to a SavedModel "
                     f'({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}); '
                     'export it without --format (an Orbax export) instead') from e
  meta = {**metadata, 'format': 'saved_model', 'serving': {
      'signature': SIGNATURE, 'input': 'images', 'input_shape': [None, *image_shape],
      'input_dtype': 'float32', 'output': 'logits', 'output_shape': [None, metadata['num_classes']],
      'platforms': list(platforms),
      'input_is': 'images after the eval preprocessing in `preprocess` (normalised float32)'}}
  with open(os.path.join(output, checkpoint.EXPORT_METADATA), 'w') as f:
    json.dump(meta, f, indent=1)
  return meta


def export_workdir(workdir, output, platforms=PLATFORMS):
  """The SavedModel export of a training workdir's latest checkpoint (as `kdjax.export` takes
  it: the exported network, its EMA when the run had one); returns the metadata written."""
  variables, metadata = inference.read(workdir)
  return save(variables, metadata, output, platforms)
