"""The tests leave nothing in the home folder (issue 31, part 7): matplotlib, which `agegender report` draws with
(test_training.py), writes its font cache and config to the test run's own folder (conftest: MPLCONFIGDIR), not to
~/.cache/matplotlib and ~/.config/matplotlib."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_the_run_gives_matplotlib_its_own_folder_outside_home():
    folder = os.environ.get("MPLCONFIGDIR")
    assert folder, "conftest.pytest_configure sets MPLCONFIGDIR"
    home = Path.home().resolve()
    assert home not in Path(folder).resolve().parents, f"MPLCONFIGDIR {folder} is inside the home folder"


def test_drawing_a_plot_leaves_the_home_folder_as_it_was(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is installed with the training extras only")
    home = tmp_path / "home"
    home.mkdir()
    # A fresh home with no XDG overrides: where matplotlib would write without MPLCONFIGDIR.
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    code = ("import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; "
            "from matplotlib import font_manager; font_manager.findfont('DejaVu Sans'); "
            "fig, ax = plt.subplots(); ax.plot([1, 2], [3, 4]); ax.set_title('MAE'); "
            f"fig.savefig({str(tmp_path / 'plot.png')!r}); print(matplotlib.get_cachedir())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "plot.png").is_file()
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == [], "written into HOME"
    assert Path(result.stdout.strip()) == Path(os.environ["MPLCONFIGDIR"])
