"""A tiny single-threaded parent for bubblewrap, so ``--die-with-parent`` means what it says.

``python -s -P launcher.py LIFELINE_FD COMMAND...`` forks ``COMMAND`` (bubblewrap)
from its only thread and waits. bubblewrap's ``--die-with-parent`` is a
``PR_SET_PDEATHSIG`` bound to the *thread* that forked it; the worker actor forks from
a Trio worker thread that exits when idle, which would kill the sandbox at random.
This process is that thread instead, and it exits:

* when ``COMMAND`` exits, with the same exit code (128 + signal if it was killed);
* when ``LIFELINE_FD`` (the read end of a pipe the server holds) reaches end of file,
  i.e. the server died: bubblewrap and everything in its PID namespace then get
  SIGKILL from the kernel;
* on SIGTERM or SIGKILL from the server, with the same effect.

Standard library only, never imported by the server.
"""

from __future__ import annotations

import os
import select
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: launcher.py LIFELINE_FD COMMAND...", file=sys.stderr)
        return 2
    lifeline, command = int(argv[0]), argv[1:]
    pid = os.fork()
    if pid == 0:
        try:
            os.close(lifeline)
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    pidfd = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([lifeline, pidfd], [], [])
        if pidfd in ready:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
        if lifeline in ready and not os.read(lifeline, 1):
            return 1  # the server is gone: our exit takes the sandbox down


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
