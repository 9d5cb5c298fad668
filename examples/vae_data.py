"""Data for the VAE examples (numpy only, shared by ``vae.py`` and ``vae_numpyro.py``).

* ``digits``: scikit-learn's 8x8 digits binarized at half intensity, split at random (seed
  0) into 1300 training, 200 validation and 297 test images; Bernoulli likelihood.
* ``freyfaces``: the Frey Faces (``DATA/freyfaces/freyfaces.pkl``), random 1565 / 200 / 200
  split as in the Sylvester-flows code: ``np.random.seed(split_seed)`` then
  ``np.random.shuffle`` (numpy's legacy generator; the paper averages the splits of seeds
  123, 321 and 231); 256-way categorical likelihood per pixel from a discretized mixture
  of ``MIXTURE`` logistics.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MIXTURE = 3  # logistic components per pixel for the 256-way categorical
#: The posteriors (``--posteriors``): a diagonal Gaussian, or an `AmortizedFlow` of that
#: name on the encoder's Gaussian (recipe options in ``args.flow_options[name]``).
POSTERIORS = ("gaussian", "iaf", "planar", "radial", "sylvester")


def load(dataset: str, data_dir: Path, split_seed: int = 123) -> dict:
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
    order = np.random.RandomState(split_seed).permutation(len(images))  # = seed + shuffle
    train, valid, test = np.split(images[order], [1565, 1765])
    return dict(
        train=train, valid=valid, test=test, shape=(28, 20), latent=64, hidden=512,
        likelihood="categorical256",
    )  # fmt: skip


def parse_args(
    description: str, argv: list[str] | None, *, out: bool
) -> tuple[argparse.Namespace, dict, int, int, int]:
    """The command line shared by ``vae.py`` and ``vae_numpyro.py`` (``out``: a figure folder).

    Returns:
        ``(args, data, epochs, warmup, particles)``: the parsed arguments, `load`'s data with
        ``--hidden`` applied, the epoch count, the KL warm-up epochs and the test ELBO draws.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", choices=["digits", "freyfaces"], default="digits")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--posteriors", nargs="+", default=["gaussian", "iaf"], choices=list(POSTERIORS)
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="KL warm-up epochs")
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--particles", type=int, default=100, help="test ELBO draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split-seed", type=int, default=123, help="Frey Faces split (published: 123 321 231)"
    )
    parser.add_argument("--hidden", type=int, default=None, help="MLP width (default per data)")
    parser.add_argument(
        "--weight-decay", type=float, default=0.0, help="decoupled weight decay (per unit lr)"
    )
    parser.add_argument(
        "--flow-weight-decay",
        type=float,
        default=None,
        help="decoupled weight decay of the amortized flow's weights (default --weight-decay)",
    )
    parser.add_argument(
        "--channels", type=int, default=0, help="gated conv nets of this width (0: MLPs)"
    )
    parser.add_argument(
        "--flow-transforms",
        "--iaf-transforms",
        type=int,
        default=2,
        dest="flow_transforms",
        help="layers of the amortized flow (IAF, planar, radial, Sylvester)",
    )
    parser.add_argument(
        "--flow-hidden",
        type=int,
        nargs="*",
        default=None,
        help="hidden widths of the flow's networks of h (default: two of --hidden; none "
        "given: linear in h, as the Sylvester-flows paper amortizes)",
    )
    parser.add_argument(
        "--sylvester-kind",
        choices=["orthogonal", "householder", "triangular"],
        default="orthogonal",
        help="Q of the Sylvester layers",
    )
    parser.add_argument(
        "--sylvester-columns", type=int, default=None, help="M of orthogonal Sylvester layers"
    )
    parser.add_argument(
        "--sylvester-reflections",
        type=int,
        default=None,
        help="reflections of Householder Sylvester layers",
    )
    if out:
        parser.add_argument("--out", type=Path, default=Path("outputs"))
    parser.add_argument("--quick", action="store_true", help="a few epochs: a smoke run")
    args = parser.parse_args(argv)
    sylvester = {"kind": args.sylvester_kind}
    if args.sylvester_columns is not None:
        sylvester["columns"] = args.sylvester_columns
    if args.sylvester_reflections is not None:
        sylvester["reflections"] = args.sylvester_reflections
    args.flow_options = {"sylvester": sylvester}
    if args.flow_hidden is not None:
        for name in POSTERIORS[1:]:
            args.flow_options.setdefault(name, {})["hidden"] = tuple(args.flow_hidden)

    if args.flow_weight_decay is None:
        args.flow_weight_decay = args.weight_decay
    data = load(args.dataset, args.data, args.split_seed)
    if args.hidden is not None:
        data["hidden"] = args.hidden
    epochs = args.epochs or (3 if args.quick else 200 if args.dataset == "digits" else 300)
    warmup = args.warmup if args.warmup is not None else min(epochs // 4, 50)
    particles = 2 if args.quick else args.particles
    return args, data, epochs, warmup, particles
