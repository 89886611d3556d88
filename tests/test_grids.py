"""The run option ``classifier_augment`` in the studies' grids (qdiff_lib.grids): key-neutral at its default, so
that every committed run keeps its name; set by ``medmnist16`` from qdiff_lib.classifier_choice.ADOPTED_AUGMENT."""

import dataclasses

from qdiff_lib import classifier_choice
from qdiff_lib.experiment import KEY_NEUTRAL, RunOptions
from qdiff_lib.grids import MEDMNIST_CASES, arm_options, run_key, study_runs

#: A committed run (results/full/medmnist/), its options as its summary records them (written before the option
#: existed) and its key, literally.
COMMITTED_KEY = "retinamnist-l0-n64-none-s0-d8902b1909"
COMMITTED_OPTIONS = {
    "dataset": "retinamnist", "label": 0, "n_train": 64, "n_ref": 40, "bottleneck": "none", "ansatz": "rzry",
    "n_qubits": 8, "n_layers": 3, "gate": "product", "nonlinearity": "tanh", "angle_scaling": "none",
    "schedule": "cosine", "timesteps": 1000, "noise": "gaussian", "noise_kwargs": {},
    "timestep_distribution": "uniform", "steps": 2000, "epochs": None, "batch_size": 64, "lr": 0.0003,
    "ema_decay": 0.999, "ema_warmup": True, "checkpoint_every": 500, "n_samples": 500, "sampler": "ddim",
    "sample_steps": 50, "eta": 0.0, "seed": 0, "device": "auto", "metrics": True,
}


def test_the_default_classifier_keeps_every_run_key():
    options = RunOptions(**COMMITTED_OPTIONS)
    assert options.classifier_augment == "none" and KEY_NEUTRAL["classifier_augment"] == "none"
    assert run_key(options) == COMMITTED_KEY
    flips = run_key(dataclasses.replace(options, classifier_augment="flips"))
    assert flips != COMMITTED_KEY and flips.startswith("retinamnist-l0-n64-none-s0-")
    assert run_key(dataclasses.replace(options, classifier_augment="dihedral")) != flips
    # and the committed grid still names that run
    assert COMMITTED_KEY in {run_key(o) for o in study_runs("medmnist", "full")}


def test_medmnist16_scores_each_case_with_its_adopted_classifier():
    for profile in ("full", "ci"):
        runs = study_runs("medmnist16", profile)
        assert runs and all(o.classifier_augment == classifier_choice.adopted_augment(o.dataset) for o in runs), profile
    full = study_runs("medmnist16", "full")
    assert {(o.dataset, o.classifier_augment) for o in full} == {
        (ds, classifier_choice.ADOPTED_AUGMENT.get(ds, "none")) for ds, _ in MEDMNIST_CASES}
    assert {o.classifier_augment for o in full if o.dataset == "retinamnist"} == {"flips"}
    assert {o.classifier_augment for o in full if o.dataset == "pathmnist"} == {"dihedral+shift"}
    # the ci profile's one case takes the same path
    assert {(o.dataset, o.classifier_augment) for o in study_runs("medmnist16", "ci")} == {
        ("pathmnist", "dihedral+shift")}
    # a case without an adopted augmentation has a key of the default classifier's runs: the same options with an
    # augmentation would name another run (the option enters the key only when it is set)
    plain = [o for o in full if o.classifier_augment == "none"]
    assert plain and all(run_key(o) != run_key(dataclasses.replace(o, classifier_augment="flips")) for o in plain)


def test_the_earlier_studies_keep_the_default_classifier():
    for study in ("mnist", "medmnist", "scaling", "noise_schedules", "mnist16", "scaling16", "released16"):
        assert {o.classifier_augment for o in study_runs(study, "ci")} == {"none"}, study
    assert {o.classifier_augment for o in study_runs("medmnist", "full")} == {"none"}
    assert arm_options("se").classifier_augment == "none"
