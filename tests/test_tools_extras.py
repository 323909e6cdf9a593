"""`import cnnops` needs only torch and numpy; the commands name the extra they miss (issue 11).

Each check runs in a child process where matplotlib, scikit-learn and tqdm cannot be imported
(`sys.modules[name] = None` makes `import name` raise ImportError, as if not installed).
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = ("import sys\n"
         "for name in ('matplotlib', 'sklearn', 'tqdm'):\n"
         "    sys.modules[name] = None\n")


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_import_needs_no_tools_extra():
    done = run_blocked(
        "import torch, cnnops, cnnops.nn, cnnops.models, cnnops.functional\n"
        "import cnnops.tools.check, cnnops.tools.bench, cnnops.tools.harness\n"
        "import cnnops.tools.train, cnnops.tools.catalogue, cnnops.tools.timing\n"
        "y = cnnops.models.lenet(backend='torch')(torch.zeros(2, 1, 28, 28))\n"
        "assert y.shape == (2, 10)\n"
        "assert all(sys.modules[m] is None for m in ('matplotlib', 'sklearn', 'tqdm'))\n"
        "print('ok')\n")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_commands_say_what_to_install():
    done = run_blocked(
        "from cnnops.__main__ import main\n"
        "print('train', main(['train', 'lenet', '--epochs', '1', '--out', '/nonexistent']))\n"
        "print('bench', main(['bench', '--models', 'lenet', '--out', '/nonexistent']))\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train 2" in done.stdout and "bench 2" in done.stdout, done.stdout
    # the message names the packages and the install command, for each command
    for command, needs in (("train", "tqdm, matplotlib, scikit-learn"), ("bench", "matplotlib")):
        line = next(x for x in done.stderr.splitlines() if f"cnnops {command}" in x)
        assert needs in line and 'pip install -e ".[tools]"' in line, line
    # check needs none of them: its help is there
    done = run_blocked("from cnnops.__main__ import main\n"
                       "import contextlib, io\n"
                       "f = io.StringIO()\n"
                       "with contextlib.redirect_stdout(f):\n"
                       "    try:\n"
                       "        main(['check', '--help'])\n"
                       "    except SystemExit as e:\n"
                       "        assert e.code == 0\n"
                       "assert '--fuzz' in f.getvalue()\n")
    assert done.returncode == 0, done.stderr[-3000:]
