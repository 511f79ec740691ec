"""Run a command in a pseudo-terminal so it sees a real TTY; relay our stdin to it and its output to stdout.

Usage: python3 pty-run.py COMMAND [ARGS...]
Exits with the command's exit code (128 + N when killed by signal N). Tests use it to type at
interactive prompts (test/helpers/pty.ts) exactly as a user would, Ctrl-C included.
"""

import fcntl
import os
import pty
import select
import struct
import sys
import termios

pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])

# A wide terminal, so prompts are not wrapped mid-word.
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))

stdin_open = True
while True:
    fds = [fd] + ([0] if stdin_open else [])
    try:
        ready, _, _ = select.select(fds, [], [], 0.05)
    except InterruptedError:
        continue
    if 0 in ready:
        data = os.read(0, 4096)
        if data:
            os.write(fd, data)
        else:
            stdin_open = False
    if fd in ready:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed its side
            data = b""
        if not data:
            break
        os.write(1, data)

_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    sys.exit(128 + os.WTERMSIG(status))
sys.exit(os.WEXITSTATUS(status))
