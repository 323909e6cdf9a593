"""Installing from a clean environment with the README's command (issue 12).

The case that broke: a virtual environment with `wheel` and setuptools >= 80 under pip < 25.
Without a [build-system] table pip took its legacy `setup.py develop` path, which setuptools
now runs as an isolated build that cannot import torch. This test makes such an environment
(the venv's own pip, 23.2 for Python 3.11, plus the newest setuptools and wheel), installs
`torch==2.13.0` (pinned: the CPU build from the local wheel folder; a bare `torch` would pull
the multi-GB CUDA build), then runs `pip install --no-build-isolation -e .` on a copy of the
committed tree and imports the result from outside the source tree.

It builds with CNNOPS_BUILD_CPP=0: compiling the extension takes minutes on two cores and is
what every other test already exercises; what is under test here is pip's path through
pyproject.toml and setup.py. It also shows that `import cnnops` needs only torch and numpy:
the fresh environment has neither matplotlib, scikit-learn nor tqdm.

Slow (a minute or two: most of it is unpacking torch), so it runs only when asked:
    CNNOPS_INSTALL_TEST=1 python -m pytest -q tests/test_install.py     (or: make install-check)
It imports nothing of cnnops in this process (--noconftest works: it needs only pytest).
"""
import os
import re
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = os.environ.get("CNNOPS_INSTALL_TORCH", "torch==2.13.0")

pytestmark = pytest.mark.skipif(
    os.environ.get("CNNOPS_INSTALL_TEST") != "1",
    reason="slow fresh-venv install; set CNNOPS_INSTALL_TEST=1 (make install-check)")


def sh(*argv, cwd=None, env=None):
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, (f"{' '.join(map(str, argv))} exited {done.returncode}\n"
                                  f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def fresh_clone(dest: Path) -> Path:
    """The committed tree (HEAD) as a fresh clone has it: no build/, no .so, no edits."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def test_readme_install_in_a_fresh_venv_with_wheel_and_newest_setuptools(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    sh(*pip, "install", "--upgrade", "setuptools", "wheel")
    sh(*pip, "install", TORCH_SPEC, "numpy")
    versions = sh(python, "-c", "import importlib.metadata as m; "
                  "print(m.version('pip'), m.version('setuptools'), m.version('wheel'))").split()
    pip_version, setuptools_version = versions[0], versions[1]
    source = fresh_clone(tmp_path / "src")

    env = dict(os.environ, CNNOPS_BUILD_CPP="0", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    # The README's command, exactly (not quiet: pip's log shows which path it took).
    log = sh(python, "-m", "pip", "--disable-pip-version-check", "install",
             "--no-build-isolation", "-e", ".", cwd=source, env=env)
    # The PEP 517 editable build, not the legacy `setup.py develop` that broke: with the C++
    # build on, that one fails with "No module named 'torch'" (its inner build is isolated).
    # CNNOPS_BUILD_CPP=0 keeps setup.py from importing torch, so the path is asserted here.
    assert "setup.py develop" not in log, log[-3000:]
    assert "Building editable for cnnops (pyproject.toml)" in log, log[-3000:]

    probe = ("import sys, cnnops, cnnops.nn, cnnops.models, cnnops.shapes\n"
             "for name in ('matplotlib', 'sklearn', 'tqdm'):\n"
             "    assert name not in sys.modules, name\n"
             "print(cnnops.__file__)\n"
             "print(cnnops.__version__)\n"
             "print(cnnops.models.lenet(backend='torch')(__import__('torch').zeros(1, 1, 28, 28))"
             ".shape)\n")
    out = sh(python, "-c", probe, cwd=tmp_path, env=env).splitlines()
    assert Path(out[0]).resolve() == (source / "cnnops" / "__init__.py").resolve(), out
    # the version pyproject.toml reads (dynamic) from cnnops/__init__.py
    assert out[1] == re.search(r'^__version__ = "([^"]+)"',
                               (ROOT / "cnnops" / "__init__.py").read_text(), re.M).group(1)
    assert out[2] == "torch.Size([1, 10])"
    # The command line works in the fresh env and, with the tools extra absent, says what to
    # install instead of failing with a bare ImportError.
    assert "check" in sh(python, "-m", "cnnops", "--help", cwd=tmp_path, env=env)
    done = subprocess.run([str(python), "-m", "cnnops", "train", "lenet", "--epochs", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and 'pip install -e ".[tools]"' in done.stderr, done.stderr
    print(f"installed with pip {pip_version}, setuptools {setuptools_version}, "
          f"wheel {versions[2]}")
