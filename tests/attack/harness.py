"""The pytest side: run a suite in the fork server once, look results up."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional

import pytest

TESTS = Path(__file__).resolve().parent.parent
SUITE_TIMEOUT = 400


def run_suite(suite: str, cuda_library: Optional[str] = None,
              extra_env: Optional[Dict[str, str]] = None) -> Dict[str, Optional[str]]:
    """name -> None (passed) or the failure's description, for every case."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env.pop("MEMMANAGER_CUDA_LIBRARY", None)
    if cuda_library:
        env["MEMMANAGER_CUDA_LIBRARY"] = str(cuda_library)
    env.update(extra_env or {})
    with tempfile.TemporaryDirectory(prefix="attack-") as where:
        out = os.path.join(where, suite + ".jsonl")
        proc = subprocess.run([sys.executable, "-m", "attack.forkserver", suite, out],
                              cwd=str(TESTS), env=env, capture_output=True, text=True,
                              timeout=SUITE_TIMEOUT)
        results: Dict[str, Optional[str]] = {}
        if os.path.exists(out):
            with open(out) as f:
                for line in f:
                    row = json.loads(line)
                    results[row["name"]] = row["detail"]
    if proc.returncode != 0:
        raise AssertionError("the fork server failed (%d):\n%s\n%s"
                             % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
    return results


def check(results: Dict[str, Optional[str]], suite: str, names) -> None:
    """Every named case passed; else one failure listing each failed case."""
    failed = []
    for name in names:
        detail = results.get(name, "case did not run")
        if detail is not None:
            failed.append("%s\n    %s\n    rerun: cd tests && python -m attack.forkserver %s "
                          "/tmp/attack.jsonl '%s'" % (name, detail[:1500].replace("\n", "\n    "),
                                                      suite, name))
    if failed:
        pytest.fail("%d of %d cases failed:\n%s" % (len(failed), len(names), "\n".join(failed)),
                    pytrace=False)
