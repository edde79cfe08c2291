"""The layers of harness/ hold (.importlinter's contracts, checked by import-linter): devices never import
the reports, statistics import no device or store, workloads (the agents' code) and reports import no
device or runner; Android and iOS never import each other, the device template imports no kind, and
nothing below the CLI, its commands and the session imports them."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--config", str(REPO / ".importlinter")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "8 kept" in proc.stdout
