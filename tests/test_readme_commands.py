"""Every command the README shows, against a plain `pip install .` in a fresh venv: a module a README command
imports that pyproject.toml does not declare fails here (it once was matplotlib, for `audit --plot`).

The venv is built with uv from a copy of this checkout (uv's per-user cache: seconds, a few MB), and every
command runs offline in a throwaway HOME, outside the checkout, so nothing can come from the source tree or
from .venv. Commands in the README's bash blocks run as written (`all` with --dry-run: they would launch);
every other `reproduce VERB` the README names runs through CHECKS, and a verb missing there fails the test.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
OK = (0, 3)                     # 3: over budget, a designed outcome (the 3x-slower simulation is stopped)

# In order: the simulation leaves a run in the ledger for status / runs / audit to read.
CHECKS = [
    ["all", "--budget", "450", "--backend", "sim", "--sim-slowdown", "3", "-y"],
    ["prices", "H100:8", "--spot", "--top", "3"],
    ["plan", "--scale", "smoke", "--set", "sft.num_train_epochs=1"],
    ["stage", "sft", "--budget", "450", "--dry-run"],
    ["preflight", "--scale", "smoke"],
    ["logs", "--help"], ["cancel", "--help"],   # they take a RUN id the sim run above makes at random
    ["status"], ["runs"], ["audit"], ["audit", "--csv"], ["audit", "--plot", "spend.png"], ["calibration"],
    *([program, "--help"] for program in ("generate", "filter", "rewrite", "convert", "sft", "evaluate")),
]


def bash_block_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [line.split("#", 1)[0].split() for block in blocks for line in block.splitlines()]
    return [words[1:] for words in lines if words[:1] == ["reproduce"]]


def readme_verbs() -> set[str]:
    """Verbs of every `reproduce ...` in code: inline spans (the Commands table) and bash blocks."""
    spans = re.findall(r"`([^`\n]+)`", README) + [" ".join(["reproduce", *c]) for c in bash_block_commands()]
    named = [m.group(1) for span in spans if (m := re.match(r"reproduce ((?:[a-z]+\\?\|)*[a-z]+)\b", span))]
    return {verb for group in named for verb in re.split(r"\\?\|", group)}


def find_uv() -> str:
    from reproduce.locks import uv_bin

    return uv_bin() or pytest.skip("no uv (make installs it): cannot build the fresh venv")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """(bin folder, env, cwd): `pip install .` of a copy of this checkout, in a fresh venv."""
    root = tmp_path_factory.mktemp("readme")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".uv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "artifacts"))
    uv, venv = find_uv(), root / "venv"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    for argv in ([uv, "venv", "-q", "--python", py, str(venv)],
                 [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(src)]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    shutil.rmtree(src)                        # nothing may come from a source tree
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REPRODUCE_", "AWS_", "VIRTUAL_ENV", "PYTHON", "OPENAI_"))}
    env.update(HOME=str(home), REPRODUCE_HOME=str(home / ".reproduce"), SKY_RUNTIME_DIR=str(home),
               REPRODUCE_OFFLINE="1", SKYPILOT_DISABLE_USAGE_COLLECTION="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return venv / "bin", env, home


def reproduce(plain, args: list[str]) -> subprocess.CompletedProcess:
    bin_dir, env, cwd = plain
    return subprocess.run([str(bin_dir / "reproduce"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_install_is_plain(plain):
    bin_dir, env, cwd = plain
    where = subprocess.run([str(bin_dir / "python"), "-c", "import reproduce, sky_tasks; print(reproduce.__file__)"],
                           cwd=cwd, env=env, capture_output=True, text=True)
    assert "site-packages" in where.stdout and str(REPO) not in where.stdout, where.stderr


def test_every_readme_verb_is_checked():
    checked = {args[0] for args in CHECKS + bash_block_commands()}
    assert readme_verbs() - checked == set(), "a README command no check here runs: add it to CHECKS"
    assert {"plan", "all", "audit", "prices"} <= readme_verbs()        # the parser still finds the README's


@pytest.mark.parametrize("args", CHECKS + bash_block_commands(), ids=" ".join)
def test_readme_command_runs_on_a_plain_install(plain, args):
    if args[0] == "all" and "--backend" not in args:
        args = [*args, "--dry-run"]            # as written it launches the recipe
    done = reproduce(plain, args)
    assert done.returncode in OK, f"reproduce {' '.join(args)}: exit {done.returncode}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr, done.stderr[-2000:]
    if args[:2] == ["audit", "--plot"]:
        assert (plain[2] / "spend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plain_install_uploads_its_packages_not_the_folder_it_runs_in(plain):
    """`workdir: .` is what SkyPilot uploads to every node: from a plain install that is a copy of the installed
    packages (the locks the setup installs, the stage programs the run starts), never the user's folder."""
    bin_dir, env, cwd = plain
    done = reproduce(plain, ["all", "--budget", "100000", "--dry-run", "--backend", "sky", "--bucket", "s3://my-runs",
                             "-y"])
    assert done.returncode == 0, done.stderr[-2000:]
    workdirs = set(re.findall(r"^workdir: (.+)$", done.stdout, re.M))
    assert len(workdirs) == 1, done.stdout[-3000:]
    root = Path(workdirs.pop())
    assert root.parent == cwd / ".cache" / "reproduce" / "workdir", root     # the per-user cache (HOME is cwd)
    assert (root / "sky_tasks" / "locks" / "generate.txt").is_file()
    assert (root / "sky_tasks" / "setup.sh").is_file()                      # what every task's setup: runs
    assert (root / "reproduce" / "stages" / "sft.py").is_file()
