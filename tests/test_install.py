"""Packaging: a wheel of the project, installed into a fresh venv, provides the plugin.

The dependencies are borrowed from the test environment (a .pth line) so the test
needs no network; the project itself is installed from its wheel, not the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

from jmappushd.web.demo import STATIC_FILES

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_plugin_and_twistd_finds_it(tmp_path: Path) -> None:
    """`pip install` of the wheel into a fresh venv → `twistd --help` lists jmappushd."""
    dist = tmp_path / "dist"
    # Build from a clean copy: a stale build/ folder in the checkout could hide a
    # package missing from setup.cfg.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", "build", "dist", "var", "*.egg-info", ".git", "__pycache__", "*_cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist),
         str(source)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    wheel = next(dist.glob("jmappushd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/jmappushd_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    assert "jmappushd/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    for static in STATIC_FILES:  # the demo page's files are package data
        assert f"jmappushd/web/demo_static/{static.decode()}" in names, static

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--quiet", str(wheel)], check=True, capture_output=True, timeout=300)
    twistd = "from twisted.scripts.twistd import run; run()"
    result = subprocess.run([str(python), "-c", twistd, "--help"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "jmappushd" in result.stdout, result.stdout + result.stderr
    where = subprocess.run([str(python), "-c", "import jmappushd; print(jmappushd.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path).stdout
    assert where.startswith(str(env_dir)), where
    # Every module of the package made it into the wheel and imports from there.
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "jmappushd").rglob("*.py") if p.name != "__init__.py")
    for module in modules:
        assert module.replace(".", "/") + ".py" in names, module
    check = subprocess.run([str(python), "-c", "import importlib, sys\n"
                            "for m in sys.argv[1:]: importlib.import_module(m)", *modules],
                           capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
