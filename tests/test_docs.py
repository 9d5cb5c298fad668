"""Every ```python code block of ``README.md`` and ``docs/**/*.md`` runs, as written.

The blocks are found by globbing, so a new page or a new block is tested without touching
this file. Each block is one test case, with an id ``<page>:L<line>`` (the line of its
opening fence, e.g. ``docs/getting-started.md:L27``), and runs

- on its own, in a fresh namespace: a block has its own imports and its own small data,
  and nothing carries over from the blocks above it on the page;
- in a fresh temporary directory (the current directory is restored afterwards), so a
  block that saves a file writes it there;
- seeded: Python's ``random``, numpy's and torch's global generators are seeded with 0
  before the block and their states restored after it, and Pyro's parameter store is
  cleared before and after;
- with torch's default dtype, torch's thread count and JAX's ``jax_enable_x64`` and
  ``jax_disable_most_optimizations`` flags restored after it. For speed the blocks run on
  one torch thread and with XLA's optimisations off (the blocks' arrays are small, and
  compiling, not running, dominates their JAX time); neither changes what a block computes
  beyond rounding.

A traceback names the markdown page and the line in it. A block that imports a third-party
package that is not installed (the other backend's extra, say) is skipped, not failed.

Where a block shows an output (a shape, a list of names), the block asserts it, e.g.
``assert log_p.shape == (10,)``, so that the text and the behaviour cannot drift apart.
Keep the blocks fast (a few seconds each: few epochs, small data); a realistic setting
that would be slow goes into a comment.

Blocks that are not run (use this sparingly; ``docs/index.md``, "Code examples", states
the same convention for contributors):

- every fence names its language (checked below): ```bash for shell commands, ```text for
  formulas, error messages and other output; only ```python blocks are run;
- a ```python block that must not run starts with a marker comment on its first line
  that says why, ``# not run: <reason>`` (e.g. ``# not run: needs a CUDA GPU``). It is
  reported as a skipped case with that reason; a marker without a reason fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")])

NOT_RUN = re.compile(r"#\s*not run\b:?(?P<reason>.*)", re.IGNORECASE)
OPENING = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")

# Packages whose absence skips a block (the extras); a missing pyroflows module fails it.
OPTIONAL = {"torch", "pyro", "jax", "jaxlib", "numpyro", "equinox", "optax", "diffrax", "arviz"}
OPTIONAL |= {"torchdiffeq", "sklearn", "scipy", "matplotlib", "tqdm"}


def code_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of each fenced block of a markdown page's text.

    ``line`` is the 1-based line of the opening fence; ``language`` the first word of the
    info string (``""`` when there is none); ``code`` the block's lines with the fence's
    indentation (a block inside a tab or an admonition) removed.
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        opening = OPENING.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].split(" ")[0].strip("{}.").lower()
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        blocks.append((i + 1, language, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def python_blocks() -> list:
    params = []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for line, language, code in code_blocks(page.read_text(encoding="utf-8")):
            if language in ("python", "py", "python3"):
                params.append(pytest.param(name, line, code, id=f"{name}:L{line}"))
    return params


BLOCKS = python_blocks()


def test_blocks_are_found():
    """The glob picks up the pages and their blocks (a broken parser would collect none)."""
    names = {param.values[0] for param in BLOCKS}
    assert "README.md" in names and "docs/getting-started.md" in names
    assert len(BLOCKS) >= 20


@contextlib.contextmanager
def isolated(directory: Path):
    """Run in ``directory``, seeded, and restore the global state a block may change."""
    cwd = os.getcwd()
    os.chdir(directory)
    # numpy's legacy global generator, since that is what a block's np.random.* calls use.
    saved = [(random.setstate, random.getstate())]
    saved.append((np.random.set_state, np.random.get_state()))  # noqa: NPY002
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        saved.append((torch.set_rng_state, torch.get_rng_state()))
        saved.append((torch.set_default_dtype, torch.get_default_dtype()))
        saved.append((torch.set_num_threads, torch.get_num_threads()))
        torch.manual_seed(0)
        torch.set_num_threads(1)  # the blocks' tensors are small: threads only cost time
    try:
        import pyro
    except ImportError:
        pyro = None
    if pyro is not None:
        pyro.clear_param_store()
    try:
        import jax
    except ImportError:
        jax = None
    if jax is not None:
        for flag in ("jax_enable_x64", "jax_disable_most_optimizations"):
            value = bool(jax.config.read(flag))
            saved.append((lambda value, flag=flag: jax.config.update(flag, value), value))
        # Compiling, not running, dominates the blocks' JAX time: ask XLA for little
        # optimisation (the numbers are the same up to rounding).
        jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        for restore, value in reversed(saved):
            restore(value)
        if pyro is not None:
            pyro.clear_param_store()
        os.chdir(cwd)


@pytest.fixture
def sandbox(tmp_path):
    with isolated(tmp_path):
        yield


@pytest.mark.parametrize(("page", "line", "code"), BLOCKS)
def test_block_runs(page, line, code, sandbox):
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    marker = NOT_RUN.match(first)
    if marker is not None:
        reason = marker["reason"].strip()
        assert reason, f"{page}:L{line}: a '# not run:' marker must say why the block is not run"
        pytest.skip(f"not run: {reason}")
    # Pad with blank lines so that a traceback gives the line number in the markdown page.
    compiled = compile("\n" * line + code, str(ROOT / page), "exec")
    namespace = {"__name__": "__main__"}
    try:
        exec(compiled, namespace)
    except ModuleNotFoundError as error:
        root = (error.name or "").split(".")[0]
        if root in OPTIONAL:
            pytest.skip(f"needs {root}, which is not installed")
        raise


def test_every_fence_names_its_language():
    """A bare fence would hide its block from the run: ```text, ```bash or ```python."""
    bare = [
        f"{page.relative_to(ROOT).as_posix()}:L{line}"
        for page in PAGES
        for line, language, _ in code_blocks(page.read_text(encoding="utf-8"))
        if not language
    ]
    assert not bare, f"fences without a language (use ```text for output): {bare}"


def test_the_parser():
    """Indented blocks (tabs, admonitions) are dedented; the marker is read on line 1 only."""
    text = (
        'Text\n\n=== "Tab"\n\n    ```python\n    a = 1\n\n    b = 2\n    ```\n\n```bash\nls\n```\n'
    )
    assert code_blocks(text) == [(5, "python", "a = 1\n\nb = 2\n"), (11, "bash", "ls\n")]
    assert NOT_RUN.match("# not run: needs a CUDA GPU")["reason"].strip() == "needs a CUDA GPU"
    assert NOT_RUN.match("x = 1  # not run: no") is None


def test_the_sandbox_restores_global_state(tmp_path):
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    dtype, x64, cwd = torch.get_default_dtype(), bool(jax.config.read("jax_enable_x64")), Path.cwd()
    state = torch.get_rng_state()
    with isolated(tmp_path):
        assert Path.cwd() == tmp_path
        first = torch.rand(3)
        torch.set_default_dtype(torch.float64 if dtype == torch.float32 else torch.float32)
        jax.config.update("jax_enable_x64", not x64)
    with isolated(tmp_path):
        assert torch.equal(torch.rand(3), first)  # seeded: the same draws every time
    assert torch.get_default_dtype() == dtype and bool(jax.config.read("jax_enable_x64")) == x64
    assert Path.cwd() == cwd and torch.equal(torch.get_rng_state(), state)
