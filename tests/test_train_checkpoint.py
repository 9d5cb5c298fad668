"""``fit(..., checkpoint=path, every=N)`` in both backends: a resumed run ends exactly where
an uninterrupted one does, checkpoints are written atomically, and a checkpoint that does
not match the flow, the data or the arguments is refused with a message naming it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import pyroflows.pyro as pf
import pyroflows.pyro.train as torch_train

jax = pytest.importorskip("jax")
pfj = pytest.importorskip("pyroflows.numpyro")
jax_train = pytest.importorskip("pyroflows.numpyro.train")

# 64 rows, 16 held out, 48 trained in 3 batches of 16; lr high enough that the validation
# loss goes up and down, so the patience counter is live at the interruptions below
KWARGS = {"batch_size": 16, "lr": 0.03, "validation": 0.25, "patience": 4, "seed": 7}
KWARGS.update(progress=False)
EPOCHS = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([rng.standard_normal(64), 0.5 * rng.standard_normal(64) ** 2], 1)


class Crash(Exception):
    """A simulated interruption."""


def _crash_in_epoch(monkeypatch, module, epoch: int) -> None:
    """Make ``module``'s fit raise `Crash` during epoch ``epoch`` (0-based), after its
    training steps and before its checkpoint."""
    real, calls = module._validation_loss, []

    def validation_loss(*args, **kwargs):
        calls.append(None)
        if len(calls) == epoch + 1:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "_validation_loss", validation_loss)


def _leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


# --------------------------------------------------------------------------- torch


def _torch_flow(seed: int = 0) -> pf.Flow:
    torch.manual_seed(seed)
    return pf.Flow([*pf.MAF(2, transforms=2, hidden=(8,)).transforms, pf.ActNorm(2)])


def _torch_tiny() -> pf.Flow:
    return pf.Flow([pf.ActNorm(2), pf.Scale(2)])


def _torch_params(flow) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in flow.state_dict().items()}


def test_torch_resumed_runs_end_as_the_uninterrupted_run(float64, tmp_path, monkeypatch):
    data = _data()
    flow = _torch_flow()
    full = pf.fit(flow, data, epochs=EPOCHS, checkpoint=tmp_path / "full.pt", every=2, **KWARGS)
    expected = _torch_params(flow)
    # best epoch 1, then the patience counter runs 1, 2, 3, 4: live at both interruptions
    # below (after epochs 3 and 4), and it stops the run in its last epoch
    assert full["best_epoch"] == 1 and len(full["train"]) == EPOCHS

    # 1. epochs=3, then epochs=6 from the checkpoint, into a flow with other weights
    path = tmp_path / "short.pt"
    short = pf.fit(_torch_flow(), data, epochs=3, checkpoint=path, every=2, **KWARGS)
    assert short["train"] == full["train"][:3]
    resumed_flow = _torch_flow(seed=1)
    resumed = pf.fit(resumed_flow, data, epochs=EPOCHS, checkpoint=path, every=2, **KWARGS)
    assert resumed == full
    for name, value in _torch_params(resumed_flow).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)

    # 2. a crash in epoch 5 (0-based 4): the checkpoint holds epoch 4; resume from it
    path = tmp_path / "crash.pt"
    _crash_in_epoch(monkeypatch, torch_train, epoch=4)
    with pytest.raises(Crash):
        pf.fit(_torch_flow(), data, epochs=EPOCHS, checkpoint=path, every=2, **KWARGS)
    monkeypatch.undo()
    saved = torch.load(path, weights_only=True)
    assert len(json.loads(saved["meta"])["tracker"]["train"]) == 4
    resumed_flow = _torch_flow(seed=2)
    assert pf.fit(resumed_flow, data, epochs=EPOCHS, checkpoint=path, **KWARGS) == full
    for name, value in _torch_params(resumed_flow).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)

    # 3. the full run stopped early (in its last epoch): with more epochs it stays stopped,
    # and the checkpoint gives the best epoch's parameters back
    stopped_flow = _torch_flow(seed=3)
    assert pf.fit(stopped_flow, data, epochs=80, checkpoint=tmp_path / "full.pt", **KWARGS) == full
    for name, value in _torch_params(stopped_flow).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    assert _leftovers(tmp_path) == []


def test_torch_checkpoint_write_is_atomic(float64, tmp_path, monkeypatch):
    data = _data()
    path = tmp_path / "atomic.pt"

    def broken_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", broken_save)
        with pytest.raises(OSError, match="disk full"):
            pf.fit(_torch_tiny(), data, epochs=2, checkpoint=path, **KWARGS)
    assert not path.exists() and _leftovers(tmp_path) == []
    # a good checkpoint is kept whole when a later write fails
    pf.fit(_torch_tiny(), data, epochs=2, checkpoint=path, **KWARGS)
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", broken_save)
        with pytest.raises(OSError, match="disk full"):
            pf.fit(_torch_tiny(), data, epochs=4, checkpoint=path, **KWARGS)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_torch_checkpoint_that_does_not_match_is_refused(float64, tmp_path):
    data = _data()
    path = tmp_path / "run.pt"
    pf.fit(_torch_flow(), data, epochs=2, checkpoint=path, **KWARGS)
    before = path.read_bytes()
    torch.manual_seed(0)
    wider = pf.Flow([*pf.MAF(2, transforms=2, hidden=(4,)).transforms, pf.ActNorm(2)])
    cases = [
        (wider, data, {}, r"checkpoint '.*run.pt' does not match the flow: .*\(4, 2\).*\(8, 2\)"),
        (
            pf.MAF(2),
            data,
            {},
            r"does not match the flow: the flow has .* that the checkpoint lacks",
        ),
        (_torch_flow(), data, {"lr": 0.01}, r"checkpoint .*other arguments.*lr=0.03 .*0.01 now"),
        (_torch_flow(), data, {"seed": 8}, r"checkpoint .*seed=7 in the checkpoint, 8 now"),
        (_torch_flow(), data + 1, {}, r"checkpoint .*other arguments or data \(data finger"),
        (_torch_flow(), data, {"epochs": 1}, r"checkpoint .*holds 2 trained epochs.*epochs=1"),
    ]
    for flow, x, change, message in cases:
        with pytest.raises(ValueError, match=message):
            pf.fit(flow, x, checkpoint=path, **{**KWARGS, "epochs": 3, **change})
    assert path.read_bytes() == before  # refused before anything was written
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"checkpoint '.*garbage.pt' could not be read"):
        pf.fit(_torch_flow(), data, epochs=2, checkpoint=garbage, **KWARGS)
    with pytest.raises(ValueError, match=r"checkpoint .* directory that does not exist"):
        pf.fit(_torch_flow(), data, epochs=2, checkpoint=tmp_path / "no" / "x.pt", **KWARGS)


# --------------------------------------------------------------------------- jax


def _jax_flow(seed: int = 0):
    maf = pfj.MAF(2, transforms=2, hidden=(8,), key=jax.random.key(seed))
    return pfj.Flow([*maf.layers, pfj.ActNorm(2)])


def _jax_tiny():
    return pfj.Flow([pfj.ActNorm(2), pfj.Scale(2)])


def test_jax_resumed_runs_end_as_the_uninterrupted_run(jax_x64, tmp_path, monkeypatch):
    data = _data()
    trained, full = pfj.fit(
        _jax_flow(), data, epochs=EPOCHS, checkpoint=tmp_path / "full.npz", every=2, **KWARGS
    )
    expected = pfj.get_params(trained)
    assert full["best_epoch"] == 1 and len(full["train"]) == EPOCHS

    # 1. epochs=3, then epochs=6 from the checkpoint, into a flow with other weights
    path = tmp_path / "short.npz"
    _, short = pfj.fit(_jax_flow(), data, epochs=3, checkpoint=path, every=2, **KWARGS)
    assert short["train"] == full["train"][:3]
    resumed_flow, resumed = pfj.fit(
        _jax_flow(seed=1), data, epochs=EPOCHS, checkpoint=path, every=2, **KWARGS
    )
    assert resumed == full
    for name, value in pfj.get_params(resumed_flow).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    # the structure too (ActNorm marked initialised as in the uninterrupted run)
    assert jax.tree_util.tree_structure(resumed_flow) == jax.tree_util.tree_structure(trained)

    # 2. a crash in epoch 5 (0-based 4): the checkpoint holds epoch 4; resume from it
    path = tmp_path / "crash.npz"
    _crash_in_epoch(monkeypatch, jax_train, epoch=4)
    with pytest.raises(Crash):
        pfj.fit(_jax_flow(), data, epochs=EPOCHS, checkpoint=path, every=2, **KWARGS)
    monkeypatch.undo()
    resumed_flow, resumed = pfj.fit(
        _jax_flow(seed=2), data, epochs=EPOCHS, checkpoint=path, **KWARGS
    )
    assert resumed == full
    for name, value in pfj.get_params(resumed_flow).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)

    # 3. the full run stopped early (in its last epoch): with more epochs it stays stopped,
    # and the checkpoint gives the best epoch's parameters back
    stopped_flow, again = pfj.fit(
        _jax_flow(seed=3), data, epochs=80, checkpoint=tmp_path / "full.npz", **KWARGS
    )
    assert again == full
    for name, value in pfj.get_params(stopped_flow).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    assert _leftovers(tmp_path) == []


def test_jax_checkpoint_write_is_atomic_and_mismatches_are_refused(jax_x64, tmp_path, monkeypatch):
    data = _data()
    path = tmp_path / "atomic.npz"

    def broken_savez(file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(np, "savez", broken_savez)
        with pytest.raises(OSError, match="disk full"):
            pfj.fit(_jax_tiny(), data, epochs=2, checkpoint=path, **KWARGS)
    assert not path.exists() and _leftovers(tmp_path) == []
    pfj.fit(_jax_tiny(), data, epochs=2, checkpoint=path, **KWARGS)
    before = path.read_bytes()
    cases = [
        (pfj.MAF(2, transforms=2, hidden=(4,), key=jax.random.key(0)), data, {}, r"match the flow"),
        (_jax_tiny(), data, {"lr": 0.01}, r"checkpoint .*other arguments.*lr=0.03 .*0.01 now"),
        (_jax_tiny(), data + 1, {}, r"checkpoint .*other arguments or data \(data finger"),
        (_jax_tiny(), data, {"epochs": 1}, r"checkpoint .*holds 2 trained epochs.*epochs=1"),
    ]
    for flow, x, change, message in cases:
        with pytest.raises(ValueError, match=message):
            pfj.fit(flow, x, checkpoint=path, **{**KWARGS, "epochs": 3, **change})
    assert path.read_bytes() == before
    # a torch checkpoint is not a JAX one, and the other way round
    torch_path = tmp_path / "torch.pt"
    pf.fit(_torch_tiny(), data.astype(np.float32), epochs=1, checkpoint=torch_path, **KWARGS)
    with pytest.raises(ValueError, match=r"checkpoint '.*torch.pt' could not be read"):
        pfj.fit(_jax_tiny(), data, epochs=2, checkpoint=torch_path, **KWARGS)
    with pytest.raises(ValueError, match=r"checkpoint '.*atomic.npz' could not be read"):
        pf.fit(_torch_tiny(), data, epochs=2, checkpoint=path, **KWARGS)
