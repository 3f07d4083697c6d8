"""Executes notebooks headless with nbclient; exits non-zero if a cell errors.

    python notebooks/run_notebooks.py [--write] [--out DIR] [NOTEBOOK ...]

Without NOTEBOOK, every `notebooks/*.ipynb`. The results they read come from
`WEIR_RESULTS` (see weir_results.py). With --write the executed notebooks,
outputs included, replace the files (that is how the committed outputs are
made); without it the files are left as they are. With --out DIR the
executed notebooks are also written into DIR (to look at after a test run).
"""

import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def main(argv):
    write = "--write" in argv
    out_dir = None
    if "--out" in argv:
        i = argv.index("--out")
        out_dir = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
        out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(a) for a in argv if a != "--write"] or sorted(HERE.glob("*.ipynb"))
    if not paths:
        print("no notebook found", file=sys.stderr)
        return 1
    for var in ("WEIR_RESULTS", "WEIR_EXPORT_IMG"):
        if os.environ.get(var):
            # The kernels run in notebooks/: a relative path means the caller's.
            os.environ[var] = os.path.abspath(os.environ[var])
    failed = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(HERE)}},
        )
        started = time.monotonic()
        try:
            client.execute()
        except CellExecutionError as e:
            failed.append(path.name)
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # no terminal colours in logs
            print(f"FAILED {path.name}:\n{plain}", file=sys.stderr)
            continue
        print(f"ok     {path.name} ({time.monotonic() - started:.1f} s)", file=sys.stderr)
        if write:
            nbformat.write(nb, path)
        if out_dir:
            nbformat.write(nb, out_dir / path.name)
    print(
        f"notebooks: {len(paths) - len(failed)} passed, {len(failed)} failed",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
