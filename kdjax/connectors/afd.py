"""AFD's attention over student layers for every teacher layer (ALGORITHMS.md §4.7, §7.2).

The connector holds every trainable AFD module of the reference (clovaai/attention-feature-
distillation @ dd990d0 ``distill/AFD.py``) and returns the attention ``[B, T, S]``; the
parameter-free values and the loss are :func:`kdjax.losses.afd`.

  teacher side  Q_j  = BN1d(Linear_{C_j -> d}(GAP(sg F_t_j)))                   ``query_layer{j}``
  student side  k_i  = ReLU(BN1d(Linear_{C_i -> d}(GAP(F_s_i))))                ``key_layer{i}``
                Kb   = BN1d(Linear_{d -> d*T}(k)) on the stacked [B*S, d] keys  ``bilinear``
                       (its statistics over the B*S rows), viewed as [B, S, T, d]
  positional    P_t [T, d], P_s [S, d]                                          ``p_t``, ``p_s``
  attention     softmax_i((<Kb[b,i,j], Q[b,j]> + <P_t[j], P_s[i]>) / sqrt(d))

Every Linear has PyTorch's default init, every BatchNorm1d weight 1 / bias 0, momentum 0.1
(Flax 0.9), eps 1e-5, batch statistics in training (so a training batch needs B > 1), and the
positional tables PyTorch's ``xavier_normal_`` (untruncated normal, std sqrt(2 / (rows + d))).
Channel counts and the numbers of layers come from the tapped shapes.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.connectors.layers import batch_norm
from kdjax.connectors.layers import torch_dense
from kdjax.errors import KdjaxError

# torch.nn.init.xavier_normal_: N(0, 2 / (fan_in + fan_out)), not truncated (Flax's
# glorot_normal truncates at 2 sigma).
XAVIER_NORMAL = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal')


def _gap(f):
  """Global average over H, W of an NHWC map, in float32: ``[B, H, W, C] -> [B, C]``."""
  return jnp.mean(f.astype(jnp.float32), axis=(1, 2))


class LinearBN(nn.Module):
  """The reference's ``nn_bn_relu``: Linear -> BatchNorm1d [-> ReLU]."""
  features: int
  in_features: int
  relu: bool

  @nn.compact
  def __call__(self, x, train):
    x = torch_dense(self.features, in_features=self.in_features, name='linear')(x)
    x = batch_norm(train, 'bn', None)(x)
    return nn.relu(x) if self.relu else x


class AFDAttention(nn.Module):
  """Returns {'attention': [B, T, S]}: every teacher tap's softmax over the student taps."""
  student_taps: Sequence[str]
  teacher_taps: Sequence[str]
  student_channels: Sequence[int]
  teacher_channels: Sequence[int]
  qk_dim: int = 128

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del batch  # only CRD reads the batch
    d, n_s, n_t = self.qk_dim, len(self.student_taps), len(self.teacher_taps)
    batch_size = student[self.student_taps[0]].shape[0]
    if train and batch_size < 2:
      raise KdjaxError('afd: its BatchNorm1d layers need more than one example per training '
                       f'batch, got {batch_size}; raise batch_size')
    # Teacher side: trainable queries from the detached teacher taps.
    query = jnp.stack([
        LinearBN(d, c, relu=False, name=f'query_layer{j}')(
            _gap(jax.lax.stop_gradient(teacher[tap])), train)
        for j, (tap, c) in enumerate(zip(self.teacher_taps, self.teacher_channels))], axis=1)
    # Student side: one key per student tap, then the shared bilinear map on [B*S, d].
    key = jnp.stack([
        LinearBN(d, c, relu=True, name=f'key_layer{i}')(_gap(student[tap]), train)
        for i, (tap, c) in enumerate(zip(self.student_taps, self.student_channels))], axis=1)
    bilinear_key = LinearBN(d * n_t, d, relu=False, name='bilinear')(
        key.reshape(batch_size * n_s, d), train).reshape(batch_size, n_s, n_t, d)
    p_t = self.param('p_t', XAVIER_NORMAL, (n_t, d), jnp.float32)
    p_s = self.param('p_s', XAVIER_NORMAL, (n_s, d), jnp.float32)
    return {'attention': losses.afd_attention(bilinear_key, query, p_t, p_s)}
