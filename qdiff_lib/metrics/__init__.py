"""Sample-quality metrics that mean something with fewer than 100 training images.

The paper's numbers are FID of about 13 images against an unrelated real set, and SSIM between unpaired images (defect 4
in the book's introduction, ``intro.md``). Here every metric is computed on raw sample tensors ``(B, C, 28, 28)`` in
[-1, 1], in the feature space of a classifier trained on the same dataset (:mod:`qdiff_lib.classifier`), against
held-out real images of the same class:

* **KID** (Binkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial kernel
  :math:`k(x, y) = (x^\\top y / d + 1)^3`. Unbiased at any sample size, so it is the headline small-sample
  metric. Computed by torchmetrics' ``KernelInceptionDistance`` with our feature module; its standard error
  comes from a delete-one jackknife over both sample sets.
* **FID** (Heusel et al. 2017): the Frechet distance between Gaussians fitted to the two feature sets,
  :math:`\\|\\mu_1-\\mu_2\\|^2 + \\mathrm{Tr}(\\Sigma_1+\\Sigma_2-2(\\Sigma_1\\Sigma_2)^{1/2})`. Biased upwards at
  small N (a covariance from N vectors in 128 dimensions); reported for comparison with the paper, with its
  spread under redrawing of the real reference (:func:`fid_spread`).
* **precision / recall** (Kynkaanniemi et al. 2019): the fraction of generated samples inside the real
  k-nearest-neighbour manifold, and of real images inside the generated one; with density and coverage
  (Naeem et al. 2020), which an isolated real image sways less.
* **class consistency**: the classifier's accuracy on samples meant to be of class ``label``.
* **speckle** (pixel space): the share of background pixels (lit by no real image of the class) that samples
  light, against the rate of real images (:func:`speckle`); None where the class has no background.
* **paper_protocol**: the paper's own protocol, FID of 13 samples against 13 real images of any class (its main
  table) or against the class's reference (its all-digits table), and SSIM of unpaired images, as the paper
  computed them but in the classifier's features, with the spread over redraws (:func:`paper_protocol`).
* **memorization**: median distance from held-out real images to their nearest training image, divided by the
  same median for generated samples. About 1 for a model that generalises; large when samples copy training
  images (:data:`MEMORIZATION_THRESHOLD`).

:func:`inception_fid` gives the paper's Inception-v3 FID when its weights and ``torch-fidelity`` are installed.

Modules: :mod:`~qdiff_lib.metrics.distances` (features, FID, KID, their small-sample behaviour, Inception FID),
:mod:`~qdiff_lib.metrics.neighbours` (precision/recall, density/coverage, memorization and its floor),
:mod:`~qdiff_lib.metrics.pixels` (speckle), :mod:`~qdiff_lib.metrics.evaluation` (the held-out reference, class
consistency, :func:`evaluate`), :mod:`~qdiff_lib.metrics.calibration` (floors and ceilings, the normalised
score, degradation curves), :mod:`~qdiff_lib.metrics.protocol` (the paper's protocol: :func:`paper_fid`,
:func:`paper_protocol`, :func:`protocol_groups`, :func:`protocol_table`, :func:`protocol_ranking`) and
:mod:`~qdiff_lib.metrics.scale` (the normalised KID of the experiment chapters, from each class's calibration file:
:func:`calibration_table`, :func:`add_normalised_kid`, :func:`normalised_kid`, :func:`join_normalised`); every name
is importable from ``qdiff_lib.metrics`` itself. :mod:`~qdiff_lib.metrics.calibrate` (``python -m qdiff_lib
calibrate``, which writes those files) is not re-exported:
it reads the studies' grids, which import this package.
"""

from qdiff_lib.metrics.calibration import (
    DEGRADATIONS,
    degradation_curves,
    degrade,
    kid_from_features,
    metric_floor_ceiling,
    normalised_score,
)
from qdiff_lib.metrics.distances import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    PrecomputedFeatures,
    extract_features,
    fid,
    fid_from_features,
    fid_spread,
    inception_fid,
    kid,
    kid_jackknife_se,
    small_sample_bias,
)
from qdiff_lib.metrics.evaluation import class_consistency, evaluate, held_out_reference
from qdiff_lib.metrics.neighbours import (
    MEMORIZATION_THRESHOLD,
    memorization,
    memorization_floor,
    memorization_floor_from,
    precision_recall,
)
from qdiff_lib.metrics.pixels import SPECKLE_THRESHOLD, speckle
from qdiff_lib.metrics.protocol import (
    PAPER_DRAWS,
    PAPER_N,
    PAPER_POOL,
    kendall_tau_b,
    paper_fid,
    paper_protocol,
    paper_ssim,
    protocol_groups,
    protocol_ranking,
    protocol_table,
    win_probability,
)
from qdiff_lib.metrics.scale import (
    CALIBRATE_COMMAND,
    CALIBRATION_DIR,
    MissingCalibration,
    add_normalised_kid,
    calibrate_command,
    calibration_path,
    calibration_table,
    join_normalised,
    kid_scale,
    load_calibration,
    normalised_difference,
    normalised_kid,
)

#: The version of :func:`evaluate`'s output. Raise it whenever a change of the metrics changes a number or adds an
#: entry: ``python -m qdiff_lib study --rescore`` recomputes the metrics of every run whose summary records an older
#: version (:mod:`qdiff_lib.rescore`), from the run's kept samples, without retraining.
METRICS_VERSION = 3  # 2: evaluate() gained "speckle" (qdiff_lib.metrics.pixels); 3: "paper_protocol" (the paper's
#                      FID of 13 samples and SSIM with their spread over redraws, qdiff_lib.metrics.protocol)
#                      A classifier trained with augmentation (evaluate's classifier_augment, a run option added
#                      later) adds the entry "classifier" to the output; the default classifier's output is version
#                      3's as before, so no run scored before needs rescoring.

__all__ = [
    "METRICS_VERSION",
    "MEMORIZATION_THRESHOLD",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "extract_features",
    "fid",
    "fid_from_features",
    "PrecomputedFeatures",
    "kid",
    "kid_jackknife_se",
    "precision_recall",
    "class_consistency",
    "memorization",
    "memorization_floor",
    "memorization_floor_from",
    "fid_spread",
    "small_sample_bias",
    "inception_fid",
    "held_out_reference",
    "evaluate",
    "SPECKLE_THRESHOLD",
    "speckle",
    "DEGRADATIONS",
    "degrade",
    "degradation_curves",
    "kid_from_features",
    "metric_floor_ceiling",
    "normalised_score",
    "paper_fid",
    "PAPER_N",
    "PAPER_DRAWS",
    "PAPER_POOL",
    "paper_ssim",
    "paper_protocol",
    "protocol_ranking",
    "kendall_tau_b",
    "protocol_groups",
    "protocol_table",
    "win_probability",
    "CALIBRATION_DIR",
    "CALIBRATE_COMMAND",
    "MissingCalibration",
    "calibration_path",
    "calibrate_command",
    "load_calibration",
    "calibration_table",
    "kid_scale",
    "add_normalised_kid",
    "normalised_kid",
    "normalised_difference",
    "join_normalised",
]
