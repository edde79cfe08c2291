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


def test_top_level_help_loads_no_command():
    """`harness --help` (and a mistyped command) imports no command module and nothing heavy below it."""
    code = ("import sys, contextlib, io\n"
            "from harness import cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    cli.main(['--help'])\n"
            "assert 'inspect' in out.getvalue()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'scipy', 'pandas', 'sqlalchemy', "
            "'matplotlib') or m.startswith(('harness.commands.', 'harness.session', 'harness.store'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
