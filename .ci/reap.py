"""Run a command as a child subreaper's only child, reaping every orphan at once, as CI's init does.

A container whose PID 1 does not reap leaves orphaned processes zombies, and a zombie still counts as a member
of its process group; CI's init reaps them at once. A test that passes only with zombies around (a cleanup
``os.killpg`` on a group that no longer exists) passes in such a container and fails in CI. To see CI's
behaviour before pushing: ``python .ci/reap.py bash .ci/run`` on a clean clone. Linux only.
"""

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>

if len(sys.argv) < 2:
    sys.exit("usage: python .ci/reap.py COMMAND [ARG...]")

if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit(f"reap.py: prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
child = os.fork()
if child == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
while True:
    pid, status = os.wait()  # the command, or an orphan of it reparented here
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
        sys.exit(code if code >= 0 else 128 - code)  # killed by a signal: 128 + its number, as a shell says
