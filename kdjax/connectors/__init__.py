"""Trainable student-side modules some methods need ("connectors").

Each connector is a Flax module built by its method from the tapped shapes (never from
hand-set channel counts), called as `module(student_taps, teacher_taps, train[, batch=...])`
and returning the dict its loss reads. Randomness comes from the 'distill' RNG stream, derived
from (seed, step); state other than BatchNorm statistics (CRD's memory) lives in collections of
its own, carried in the train state next to the BatchNorm statistics. Connectors are trained with the student in the same optimizer, saved in
training checkpoints under `params['connectors'][<term>]`, and never exported
(ALGORITHMS.md §1.8, §7.2).
"""

from kdjax.connectors.afd import AFDAttention
from kdjax.connectors.crd import CRDMemory
from kdjax.connectors.embed import Embeddings
from kdjax.connectors.fitnet import ConvReg
from kdjax.connectors.fitnet import HintRegressor
from kdjax.connectors.mgd import MaskedGenerator
from kdjax.connectors.ofd import OFDConnectors
from kdjax.connectors.pefd import ProjectorEnsemble
from kdjax.connectors.reviewkd import ReviewKDConnector
