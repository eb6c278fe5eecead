"""Pure distillation losses (docs/design.md#pure-losses).

Positional arrays, then keyword-only hyperparameters; each returns a float32 scalar reduced as
the reference implementation reduces it (docs/methods.md#reductions), without loss weight or
warm-up.
Logits [B, K]; labels int32 [B] (-1 = unlabeled); feature maps NHWC [B, H, W, C]; embeddings [B, D].
"""

from kdjax.losses.logits import cross_entropy
from kdjax.losses.logits import ctkd
from kdjax.losses.logits import dist
from kdjax.losses.logits import dkd
from kdjax.losses.logits import dkd_parts
from kdjax.losses.logits import dml
from kdjax.losses.logits import kd
from kdjax.losses.logits import kl_divergence
from kdjax.losses.logits import mlkd
from kdjax.losses.logits import mlkd_parts
from kdjax.losses.logits import nkd
from kdjax.losses.logits import ofa
from kdjax.losses.logits import skd
from kdjax.losses.logits import soft_cross_entropy
from kdjax.losses.logits import standardize
from kdjax.losses.logits import sinkhorn
from kdjax.losses.logits import wkd_l
from kdjax.losses.logits import wkd_target
from kdjax.losses.logits import wsl
from kdjax.losses.features import afd
from kdjax.losses.features import afd_attention
from kdjax.losses.features import attention_transfer
from kdjax.losses.features import crd
from kdjax.losses.features import crd_nce
from kdjax.losses.features import crd_normalization_constant
from kdjax.losses.features import crd_scores
from kdjax.losses.features import feature_distance
from kdjax.losses.features import fitnet
from kdjax.losses.features import hcl
from kdjax.losses.features import mgd
from kdjax.losses.features import mgd_mask
from kdjax.losses.features import nst
from kdjax.losses.features import ofd
from kdjax.losses.features import ofd_margin
from kdjax.losses.features import pefd
from kdjax.losses.features import wkd_f
from kdjax.losses.features import wkd_f_parts
from kdjax.losses.pooling import adaptive_avg_pool2d
from kdjax.losses.pooling import nearest_resize
from kdjax.losses.pooling import resize_to_grid
from kdjax.losses.relations import cc
from kdjax.losses.relations import pkt
from kdjax.losses.relations import rkd
from kdjax.losses.relations import similarity_preserving
