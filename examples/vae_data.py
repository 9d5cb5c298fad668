"""Data for the VAE examples (numpy only, shared by ``vae.py`` and ``vae_numpyro.py``).

* ``digits``: scikit-learn's 8x8 digits binarized at half intensity, split at random (seed
  0) into 1300 training, 200 validation and 297 test images; Bernoulli likelihood.
* ``freyfaces``: the Frey Faces (``DATA/freyfaces/freyfaces.pkl``), random 1565 / 200 / 200
  split with seed 123; 256-way categorical likelihood per pixel from a discretized mixture
  of ``MIXTURE`` logistics.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MIXTURE = 3  # logistic components per pixel for the 256-way categorical


def load(dataset: str, data_dir: Path) -> dict:
    """Train / validation / test splits and the data set's settings."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        images = (load_digits().data / 16.0 > 0.5).astype(np.float32)
        order = np.random.default_rng(0).permutation(len(images))
        train, valid, test = np.split(images[order], [1300, 1500])
        return dict(
            train=train, valid=valid, test=test, shape=(8, 8), latent=8, hidden=256,
            likelihood="bernoulli",
        )  # fmt: skip
    path = data_dir / "freyfaces" / "freyfaces.pkl"
    if not path.is_file():
        raise SystemExit(f"Frey Faces not found at {path}: pass --data (the shared data folder)")
    with path.open("rb") as f:
        images = np.asarray(pickle.load(f, encoding="latin1")[0], dtype=np.float32)
    order = np.random.default_rng(123).permutation(len(images))
    train, valid, test = np.split(images[order], [1565, 1765])
    return dict(
        train=train, valid=valid, test=test, shape=(28, 20), latent=64, hidden=512,
        likelihood="categorical256",
    )  # fmt: skip
