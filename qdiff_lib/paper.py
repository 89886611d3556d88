"""What the paper and its official repository report, as data (quoted, not computed).

Source: arXiv:2504.00034 (abstract) and the official README of ChiShengChen/Quantum_MNIST_Diffusion (quoted as
published; the book's introduction, ``intro.md``, lists what they leave out). The results chapter sets these beside
the project's own numbers.
"""

from __future__ import annotations

#: The official README's main table ("v7" model): FID with Inception-v3 (from ~13 generated images) and SSIM.
PUBLISHED = [
    {"model": "classical", "dataset": "mnist", "fid": 271.05, "ssim": 0.1085},
    {"model": "quantum", "dataset": "mnist", "fid": 259.25, "ssim": 0.1263},
    {"model": "classical", "dataset": "pathmnist", "fid": 95.72, "ssim": 0.4107},
    {"model": "quantum", "dataset": "pathmnist", "fid": 84.40, "ssim": 0.0931},
]

#: The second table (full skip U-Net "v8", mean over digits 0-9, 13 generated images each, 5000 real).
PUBLISHED_V8 = [
    {"model": "classical", "dataset": "mnist", "fid": 275.68, "ssim": 0.0267},
    {"model": "quantum", "dataset": "mnist", "fid": 288.40, "ssim": 0.0323},
]

#: Number of generated images behind each published FID.
PUBLISHED_FID_N_GENERATED = 13

#: The abstract's claims, one per row of the results chapter's verdict table.
CLAIMS = {
    "quantum_better_mnist": "With fewer than 100 training images, the quantum model gives better perceptual "
    "quality and distributional similarity than the classical model of the same architecture on MNIST.",
    "quantum_better_medmnist": "The same holds on MedMNIST (PathMNIST), though the advantage is 'more nuanced' on "
    "colour data.",
    "quantum_noise_helps": "Intrinsic quantum-generated noise is a useful noise strategy for training.",
    "tailored_schedule_helps": "A tailored noise schedule, applying different noise levels across time steps "
    "during training, improves the model.",
    "circuit_trains": "The variational quantum circuit in the bottleneck is a trained component of the model.",
}
