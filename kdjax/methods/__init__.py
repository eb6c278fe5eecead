"""Distillation methods: one module per method (or family), each registering itself.

A module holds everything of its method except the pure loss (in `kdjax.losses`): the
`Method` registration with its hyperparameters and defaults, the adapter from tapped arrays to
the loss, its connector (a trainable Flax module) and its one-off constants. The contract is in
`kdjax/methods/registry.py`; docs/methods.md describes each method. A method defined in a
user's own file is registered the same way (`kdjax.methods.register(Method(...))`) before the
trainer builds the run.
"""

import importlib
import pkgutil

# The registry's API.
from kdjax.methods.registry import BuildContext
from kdjax.methods.registry import Inputs
from kdjax.methods.registry import METHODS
from kdjax.methods.registry import Method
from kdjax.methods.registry import NETWORKS
from kdjax.methods.registry import STRONG
from kdjax.methods.registry import TERM_KEYS
from kdjax.methods.registry import TRAINABLE
from kdjax.methods.registry import Term
from kdjax.methods.registry import build_terms
from kdjax.methods.registry import logits
from kdjax.methods.registry import networks
from kdjax.methods.registry import on_view
from kdjax.methods.registry import one_tap
from kdjax.methods.registry import paired_taps
from kdjax.methods.registry import reads_strong_view
from kdjax.methods.registry import register
from kdjax.methods.registry import same_taps
from kdjax.methods.registry import taps
from kdjax.methods.registry import with_constants

# Every other module of this package is a method module and registers its method(s) when it
# is imported: adding a method is adding one file here.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  if _module != 'registry':
    importlib.import_module(f'{__name__}.{_module}')
