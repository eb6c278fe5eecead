"""Cross-entropy on the labelled examples of one trainable network (docs/methods.md#ce).

`view='strong'` reads the network's logits on the strong view (input.strong_augment), for
recipes that train on both views (MLKD)."""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import on_view
from kdjax.methods.registry import register


def _loss(x, *, label_smoothing):
  logits, = x.student or x.peer  # `network` picks which one is read
  if x.targets is not None:  # Mixup / CutMix: the mixed one-hot targets, smoothed.
    return losses.soft_cross_entropy(logits, x.targets, label_smoothing=label_smoothing)
  return losses.cross_entropy(logits, x.labels, label_smoothing=label_smoothing)


CE = register(Method(
    name='ce', doc='cross-entropy on the labelled examples of one trainable network',
    taps=dict(network='student', view=''),
    reads=lambda network, view: {network: (on_view('logits', view),)},
    hparams=dict(label_smoothing=0.0), loss=_loss))
