"""A child process that adapts through the real journal until it is killed (``test_journal_kill``).

``python -m tests.faults.journal_child DIR KEYFILE``: recover the journal in DIR (replay onto a
fresh demo model), print ``BOOT <last index>``, then take steps forever, printing ``ACK <index>``
only after each step's record is durable (the acknowledgement a caller would get).
"""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.journal.files import LocalJournalFiles
from tests.integration.journal_helpers import Driver


def main(directory: str, keyfile: str) -> None:
    d = Driver(LocalJournalFiles(directory), Path(keyfile).read_bytes(), group_commit_s=0.010)
    rec = d.recover()
    print(f"BOOT {rec.last_index}", flush=True)
    while True:
        print(f"ACK {d.step()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
