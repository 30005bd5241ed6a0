"""Sound and exact verification of ReLU networks, one concept per module.

- :mod:`~sparserobust.verify.network`: a model parsed into affine, ReLU and max-pool
  layers (:func:`parse_network`);
- :mod:`~sparserobust.verify.threat`: the l_p ball intersected with the [0,1] box;
- :mod:`~sparserobust.verify.ibp` and :mod:`~sparserobust.verify.crown`: the two bound
  propagation methods; :mod:`~sparserobust.verify.alpha`: alpha-CROWN, CROWN with
  optimised ReLU slopes (:func:`alpha_certify`);
- :mod:`~sparserobust.verify.certification`: certified margins, accuracy and radius
  (:func:`certify`, :func:`certified_radius`, :func:`network_bounds`);
- :mod:`~sparserobust.verify.stages` and :mod:`~sparserobust.verify.milp`: the network
  as sparse affine stages and as a mixed-integer linear program (HiGHS);
- :mod:`~sparserobust.verify.exact`: exact l_inf decisions per point (:func:`verify_exact`);
- :mod:`~sparserobust.verify.bab` and :mod:`~sparserobust.verify.branching`: complete
  l_inf decisions by branch and bound over ReLU splits with beta-CROWN bounds
  (:func:`verify_bab`, same statuses and result type as :func:`verify_exact`);
- :mod:`~sparserobust.verify.distance`: the exact minimal adversarial l_inf distance
  (:func:`minimal_distance`);
- :mod:`~sparserobust.verify.methods`: every method by name, weakest first (ibp, crown,
  alpha, milp, bab), one verdict per point (:func:`~sparserobust.verify.methods.decide_points`);
  what ``sparserobust verify`` runs.

The study's combination of bounds, attack pre-check and MILP is the ``verify``
measurement, :func:`sparserobust.measurements.verify.verify_points`.
"""

from sparserobust.verify.alpha import alpha_certify
from sparserobust.verify.bab import BabSettings, verify_bab
from sparserobust.verify.certification import (
    METHODS,
    CertifyResult,
    NetworkBounds,
    certified_radius,
    certify,
    network_bounds,
)
from sparserobust.verify.distance import DistanceResult, minimal_distance
from sparserobust.verify.exact import STATUSES, ExactResult, verify_exact
from sparserobust.verify.ibp import forward_layers
from sparserobust.verify.network import Layer, parse_network

__all__ = [
    "METHODS",
    "BabSettings",
    "STATUSES",
    "CertifyResult",
    "DistanceResult",
    "ExactResult",
    "Layer",
    "NetworkBounds",
    "alpha_certify",
    "certified_radius",
    "certify",
    "forward_layers",
    "minimal_distance",
    "network_bounds",
    "parse_network",
    "verify_bab",
    "verify_exact",
]
