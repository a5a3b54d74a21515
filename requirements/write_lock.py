"""Print requirements/lock.txt: `pip freeze` of the current environment without torch (installed separately,
pinned, before everything else) and without the project itself."""
import subprocess
import sys

HEADER = """# Exact versions of every dependency (pip freeze of a working environment, torch excluded: it is installed
# first and separately, `pip install torch==2.13.0`). Installed with --no-deps by `make`. Regenerate: `make lock`."""

frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                        capture_output=True, text=True, check=True).stdout.splitlines()
print(HEADER)
for line in frozen:
    if not line.startswith(("torch==", "stgt-pipeline", "-e ")):
        print(line)
