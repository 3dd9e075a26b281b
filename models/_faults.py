"""Fault injection for the reliability tests, in the style of FreeBSD/TiKV fail points.

Off unless `REFIT_FAULTS_FILE` names a file. The file holds one `POINT:ACTION` line, read
each time a point is passed, so a running service can be steered between jobs:

- `pause`: write `<file>.reached` (`POINT PID`) and sleep until killed: the test then
  SIGKILLs the process at exactly that point.
- `enospc`: raise `OSError(ENOSPC)`, as a full disk would.

Points: `embedding`, `training`, `exporting` (mid-phase, after some work is done) and
`publish` (staging folder complete, before the rename that makes the version visible).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

ENV = "REFIT_FAULTS_FILE"

log = logging.getLogger(__name__)


def failpoint(point: str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        spec = Path(path).read_text().strip()
    except OSError:
        return
    name, _, action = spec.partition(":")
    if name != point:
        return
    if action == "enospc":
        log.warning("fault injected at %s: ENOSPC", point)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "pause":
        log.warning("fault injected at %s: pausing pid %d until killed", point, os.getpid())
        Path(f"{path}.reached").write_text(f"{point} {os.getpid()}\n")
        while True:
            time.sleep(3600)
