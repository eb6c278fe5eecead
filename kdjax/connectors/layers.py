"""Temporary re-export; connectors move to kdjax/methods/ and import kdjax.layers directly."""
from kdjax.layers import batch_norm, torch_conv, torch_conv_transpose, torch_dense  # noqa: F401
