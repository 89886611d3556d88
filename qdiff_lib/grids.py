"""The studies' grids: the arms, the profiles' budgets, every study's runs, and each run's stable name.

An *arm* (:data:`ARMS`) is a model variant: the U-Net with a given bottleneck, differing from the others only in
the middle of its gate (or in what is frozen). A *profile* (:data:`PROFILES`) sets the budgets: ``ci`` small, so
that every chapter executes in CI; ``full`` the study behind the verdicts. A *study* (:data:`STUDIES`) is a named
grid of :class:`~qdiff_lib.experiment.RunOptions` built for a profile; :func:`run_key` names each run stably.
Executing them is :mod:`qdiff_lib.study`'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from qdiff_lib._checks import check_choice
from qdiff_lib.classifier_choice import adopted_augment
from qdiff_lib.experiment import KEY_NEUTRAL, RunOptions

__all__ = ["ARMS", "MNIST_V1_ARMS", "MNIST16_ARMS", "SCALING16_ARMS", "MEDMNIST16_ARMS", "RELEASED16_ARMS",
           "PAPER_N_QUBITS", "MEDMNIST_CASES", "MEDMNIST_REFERENCE_CAP", "SCALING16_N", "Profile", "PROFILES",
           "CONVERGENCE_ARMS", "CONVERGENCE_STEPS", "CONVERGENCE_SCORE_AT", "CONVERGENCE_SEEDS", "TUNING_LRS",
           "TUNING_LABEL", "STUDIES", "profile", "arm_options", "study_runs", "scaling16_sizes", "arm_of", "run_key"]


#: The arms compared throughout the book: name -> the model options that define it. All gated arms share the U-Net,
#: the squeeze and up layers and their seeds, and differ only in the middle of the gate (or in what is frozen).
ARMS: dict[str, dict[str, Any]] = {
    "none": {"bottleneck": "none"},  # the official classical baseline: no bottleneck module (unmatched)
    "se": {"bottleneck": "se"},  # squeeze-and-excitation gate, classical nonlinearity tanh (matched control)
    "se_frozen": {"bottleneck": "se_frozen"},  # what the official quantum arm effectively trained
    "quantum_paper": {"bottleneck": "quantum", "ansatz": "paper"},  # the official circuit (zero gradient)
    "quantum_rzry": {"bottleneck": "quantum", "ansatz": "rzry"},  # the authors' later fix
    # Controls that separate "quantum" from "a cosine-shaped gate" (the circuit with no entangler and no weights is
    # a product of cosines of the angles):
    "se_cos": {"bottleneck": "se", "nonlinearity": "cos"},
    "quantum_rzry_frozen": {"bottleneck": "quantum", "ansatz": "rzry", "freeze_circuit": True},  # weights fixed
    "quantum_rzry_separable": {"bottleneck": "quantum", "ansatz": "rzry_separable"},  # no entangler
    "quantum_paper_released": {"bottleneck": "quantum", "ansatz": "paper", "freeze_squeeze": True},
    "fourier": {"bottleneck": "fourier"},  # classical surrogate of the rzry layer (qdiff_lib.surrogate)
}
#: The arms of the first MNIST study (8 qubits), whose grid must not change.
MNIST_V1_ARMS = ("none", "se", "se_frozen", "quantum_paper", "quantum_rzry")
#: The arms of the 16-qubit MNIST study (``none`` has no gate and no width: its 8-qubit runs pair with these).
MNIST16_ARMS = ("se", "se_cos", "quantum_paper", "quantum_rzry", "quantum_rzry_frozen", "quantum_rzry_separable",
                "fourier")
#: The circuit width of the paper (and of the ``mnist16`` study's full profile).
PAPER_N_QUBITS = 16


@dataclass(frozen=True)
class Profile:
    """Budgets of a profile. ``n_qubits`` is the circuit width used by every gated arm."""

    name: str
    steps: int
    seeds: tuple[int, ...]
    n_samples: int
    n_ref: int
    n_qubits: int
    sample_steps: int
    digits: tuple[int, ...]
    scaling_n: tuple[int, ...]


PROFILES: dict[str, Profile] = {
    # ci: every code path of a run (training with EMA warm-up and memory release, checkpoint, sampling, every metric)
    # at the smallest budget; its numbers are not evidence. 25 steps since issue 21 (make test on a slow machine; 150
    # before, then 50): the chapters' ci runs took about 400 of make test's CPU-seconds at 150 steps. 25 steps still
    # reach a memory release (qdiff_lib.train.RELEASE_EVERY) and the EMA warm-up; the checkpoint comes at the end.
    "ci": Profile("ci", steps=25, seeds=(0,), n_samples=64, n_ref=200, n_qubits=8, sample_steps=20,
                  digits=(3,), scaling_n=(10, 100)),
    # n_ref=800: every MNIST digit has at least 892 test images. The first study used 8 qubits; the studies at the
    # paper's 16 (mnist16, ...) set n_qubits=PAPER_N_QUBITS in their own grids.
    "full": Profile("full", steps=2000, seeds=(0, 1, 2), n_samples=500, n_ref=800, n_qubits=8, sample_steps=50,
                    digits=tuple(range(10)), scaling_n=(10, 25, 50, 100, 250, 1000)),
}


def profile(name: str) -> Profile:
    check_choice("profile", name, PROFILES)
    return PROFILES[name]


def arm_options(arm: str, **overrides: Any) -> RunOptions:
    """RunOptions for ``arm`` (a key of :data:`ARMS`) with ``overrides`` (any RunOptions field)."""
    check_choice("arm", arm, ARMS)
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown run option(s) {unknown}; allowed: {sorted(fields)}")
    return RunOptions(**{**ARMS[arm], **overrides})


def _budget(p: Profile) -> dict[str, Any]:
    return dict(steps=p.steps, n_samples=p.n_samples, n_ref=p.n_ref, n_qubits=p.n_qubits, sample_steps=p.sample_steps,
                sampler="ddim")


def _mnist(p: Profile) -> list:
    return [arm_options(arm, dataset="mnist", label=d, n_train=64, seed=s, **_budget(p))
            for d in p.digits for arm in MNIST_V1_ARMS for s in p.seeds]


def _mnist16(p: Profile) -> list:
    """The MNIST study at the paper's width, with every control (the ci profile keeps its own small width)."""
    width = _width(p)
    # Seeds outermost: a partly computed study holds every (digit, arm) pair of its first seeds, so that each
    # comparison can already be read over all ten digits.
    return [arm_options(arm, dataset="mnist", label=d, n_train=64, seed=s, **{**_budget(p), "n_qubits": width})
            for s in p.seeds for d in p.digits for arm in MNIST16_ARMS]


#: (dataset, label) pairs of the MedMNIST study: PathMNIST as the paper (label 1, "background", the easiest
#: class) and a harder one (label 8, colorectal adenocarcinoma epithelium), RetinaMNIST, BreastMNIST,
#: PneumoniaMNIST.
MEDMNIST_CASES = (("pathmnist", 1), ("pathmnist", 8), ("retinamnist", 0), ("breastmnist", 1), ("pneumoniamnist", 1))


def _medmnist(p: Profile) -> list:
    cases = MEDMNIST_CASES if p.name == "full" else MEDMNIST_CASES[:1]
    # PathMNIST classes 1 and 8 have 119 images each in the 1000-image subset, 55 after the 64 training images;
    # every case uses the same 40 so that their KIDs carry comparable sampling noise.
    n_ref = min(p.n_ref, 40)
    arms = ("none", "se", "quantum_rzry")
    return [arm_options(arm, dataset=ds, label=lab, n_train=64, seed=s, **{**_budget(p), "n_ref": n_ref})
            for ds, lab in cases for arm in arms for s in p.seeds]


def _scaling(p: Profile) -> list:
    return [arm_options(arm, dataset="mnist", label=3, n_train=n, seed=s, **_budget(p))
            for n in p.scaling_n for arm in ("none", "se", "quantum_rzry") for s in p.seeds]


def _noise_schedules(p: Profile) -> list:
    combos = [(sched, noise) for sched in ("cosine", "tailored") for noise in ("gaussian", "quantum")]
    return [arm_options("quantum_rzry", dataset="mnist", label=3, n_train=64, seed=s, schedule=sched, noise=noise,
                        **_budget(p))
            for sched, noise in combos for s in p.seeds]


def _width(p: Profile) -> int:
    """The circuit width of the second-edition studies: the paper's in the full profile, the profile's in ci."""
    return PAPER_N_QUBITS if p.name == "full" else p.n_qubits


#: Arms of the second-edition scaling and MedMNIST studies: the matched tanh gate, its cos twin and the circuit.
SCALING16_ARMS = ("se", "se_cos", "quantum_rzry")
MEDMNIST16_ARMS = ("none", "se", "se_cos", "quantum_rzry")
#: The released model's arms at the paper's width (what the official code effectively trained).
RELEASED16_ARMS = ("se_frozen", "quantum_paper_released")
#: Reference images per MedMNIST case in ``medmnist16`` at most (every held-out image of the class up to this cap,
#: :func:`qdiff_lib.data.few_shot_split` with ``pool="held_out"``). Our choice: a KID's standard error falls with
#: both set sizes, and beyond about twice the 500 samples the samples' side dominates it.
MEDMNIST_REFERENCE_CAP = 1000
#: The training-set sizes of ``scaling16`` besides the full class (see :func:`scaling16_sizes`).
SCALING16_N = (10, 50, 250, 1000)


def scaling16_sizes(p: Profile, label: int = 3) -> tuple[int, ...]:
    """N of ``scaling16``: :data:`SCALING16_N` and every training image of the class (full profile); ci: its own."""
    if p.name != "full":
        return p.scaling_n
    from qdiff_lib import data

    return (*SCALING16_N, len(data.load_images("mnist", "train", label)))


def _scaling16(p: Profile) -> list:
    return [arm_options(arm, dataset="mnist", label=3, n_train=n, seed=s, **{**_budget(p), "n_qubits": _width(p)})
            for s in p.seeds for n in scaling16_sizes(p) for arm in SCALING16_ARMS]


def _medmnist16(p: Profile) -> list:
    """Every MedMNIST case at the paper's width, scored by the classifier recipe adopted for its dataset
    (:data:`qdiff_lib.classifier_choice.ADOPTED_AUGMENT`, the run option ``classifier_augment``; in both profiles, so
    that the ci profile takes the same code path wherever its case adopts one)."""
    cases = MEDMNIST_CASES if p.name == "full" else MEDMNIST_CASES[:1]
    n_ref = MEDMNIST_REFERENCE_CAP if p.name == "full" else p.n_ref
    return [arm_options(arm, dataset=ds, label=lab, n_train=64, seed=s,
                        **{**_budget(p), "n_qubits": _width(p), "n_ref": n_ref, "reference_pool": "held_out",
                           "classifier_augment": adopted_augment(ds)})
            for s in p.seeds for ds, lab in cases for arm in MEDMNIST16_ARMS]


def _released16(p: Profile) -> list:
    return [arm_options(arm, dataset="mnist", label=d, n_train=64, seed=p.seeds[0],
                        **{**_budget(p), "n_qubits": _width(p)})
            for d in p.digits for arm in RELEASED16_ARMS]


#: Convergence (``convergence16``): these arms on digit 3 trained to :data:`CONVERGENCE_STEPS` and scored also at
#: :data:`CONVERGENCE_SCORE_AT` from the same run, with :data:`CONVERGENCE_SEEDS` (our choice: two seeds, as the
#: study issue asks). The prefix of each run is the run of ``mnist16`` with the same seed, so its score at step 2000
#: must equal that run's.
CONVERGENCE_ARMS = ("se", "se_cos", "quantum_rzry")
CONVERGENCE_STEPS = 10_000
CONVERGENCE_SCORE_AT = (1000, 2000, 5000)
CONVERGENCE_SEEDS = (0, 1)
#: Learning rates tried per arm on digit 5 (``tuning16``); the default (3e-4) is not rerun: those runs are
#: ``mnist16``'s digit-5 runs with the same seeds.
TUNING_LRS = (1e-4, 1e-3)
TUNING_LABEL = 5


def _convergence16(p: Profile) -> list:
    if p.name == "full":
        steps, score_at, seeds = CONVERGENCE_STEPS, CONVERGENCE_SCORE_AT, CONVERGENCE_SEEDS
    else:  # the same code path at the ci budget: trained past mnist16's budget, scored there and before it, so that
        # the prefix is read from metrics_at and a later step exists, as in the full profile
        steps, score_at, seeds = 2 * p.steps, (p.steps // 3, p.steps), p.seeds
    return [arm_options(arm, dataset="mnist", label=3, n_train=64, seed=s,
                        **{**_budget(p), "n_qubits": _width(p), "steps": steps,
                           "score_at": ",".join(map(str, score_at))})
            for s in seeds for arm in CONVERGENCE_ARMS]


def _tuning16(p: Profile) -> list:
    seeds = CONVERGENCE_SEEDS if p.name == "full" else p.seeds
    return [arm_options(arm, dataset="mnist", label=TUNING_LABEL, n_train=64, seed=s,
                        **{**_budget(p), "n_qubits": _width(p), "lr": lr})
            for s in seeds for lr in TUNING_LRS for arm in CONVERGENCE_ARMS]


#: study name -> function(profile) -> list of RunOptions. The first four are the first edition (8 qubits); the
#: others the second (the paper's width, every control), in the order of the study issue's stages.
STUDIES = {"mnist": _mnist, "medmnist": _medmnist, "scaling": _scaling, "noise_schedules": _noise_schedules,
           "mnist16": _mnist16, "convergence16": _convergence16, "tuning16": _tuning16, "scaling16": _scaling16,
           "medmnist16": _medmnist16, "released16": _released16}


def study_runs(study: str, profile_name: str = "ci") -> list:
    """The RunOptions of ``study`` under ``profile_name``."""
    check_choice("study", study, STUDIES)
    return STUDIES[study](profile(profile_name))


def _arm_signature(values: dict[str, Any]) -> tuple:
    """What makes an arm: the bottleneck, and only the options that matter for it."""
    b = values["bottleneck"]
    return (
        b,
        values.get("ansatz", "rzry") if b == "quantum" else None,
        values.get("nonlinearity", "tanh") if b in ("se", "se_frozen") else None,
        bool(values.get("freeze_squeeze", False)) and b != "se_frozen",
        bool(values.get("freeze_circuit", False)),
    )


def arm_of(options) -> str:
    """The name in :data:`ARMS` of a run's options (a RunOptions or its dict), or a descriptive name if none fits."""
    values = options if isinstance(options, dict) else dataclasses.asdict(options)
    defaults = dataclasses.asdict(RunOptions())
    signature = _arm_signature(values)
    for name, spec in ARMS.items():
        if _arm_signature({**defaults, **spec}) == signature:
            return name
    b, ansatz, nonlinearity, freeze_squeeze, freeze_circuit = signature
    return "_".join(str(x) for x in (b, ansatz, nonlinearity, freeze_squeeze and "squeeze_frozen",
                                     freeze_circuit and "frozen") if x)


def run_key(options) -> str:
    """A readable, stable name for a run: dataset, label, n, arm, seed, and a hash of every option.

    Options added after the first study are left out of the hash while they have their neutral value
    (:data:`qdiff_lib.experiment.KEY_NEUTRAL`), so that earlier runs keep their names.
    """
    values = dataclasses.asdict(options)
    for name, neutral in KEY_NEUTRAL.items():
        if values.get(name) == neutral:
            values.pop(name)
    payload = json.dumps(values, sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return f"{options.dataset}-l{options.label}-n{options.n_train}-{arm_of(options)}-s{options.seed}-{digest}"
