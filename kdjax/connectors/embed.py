"""Linear embeddings of pooled features for CC (RepDistiller `LinearEmbed`, §5.3)."""

import flax.linen as nn
import jax

from kdjax.connectors.layers import torch_dense


class Embeddings(nn.Module):
  """{'student': W_s h_s, 'teacher': W_t sg(h_t)}: both trainable, PyTorch default init.

  The teacher-side embedding is trained through the loss (RepDistiller keeps `embed_t` in its
  trainable list); the teacher's features themselves carry no gradient.
  """
  tap: str
  dim: int
  student_features: int
  teacher_features: int

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del train, batch
    flat = lambda x: x.reshape(x.shape[0], -1)
    e_s = torch_dense(self.dim, in_features=self.student_features, name='embed_s')(
        flat(student[self.tap]))
    e_t = torch_dense(self.dim, in_features=self.teacher_features, name='embed_t')(
        flat(jax.lax.stop_gradient(teacher[self.tap])))
    return {'student': e_s, 'teacher': e_t}
