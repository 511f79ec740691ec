"""Run a command in a pseudo-terminal, relay its output to stdout, and hang the terminal up on request.

Usage: python3 pty-hangup.py COMMAND [ARGS...]
A line on our stdin closes the terminal's master side, as closing a terminal window or losing an ssh
session does: the kernel sends the command SIGHUP and its writes to the terminal fail (EIO) from then
on. Exits with the command's exit code (128 + N when killed by signal N).
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

fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))

while True:
    try:
        ready, _, _ = select.select([fd, 0], [], [], 0.05)
    except InterruptedError:
        continue
    if 0 in ready:
        os.read(0, 4096)
        break
    if fd in ready:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the command closed its side
            data = b""
        if not data:
            break
        os.write(1, data)

os.close(fd)
_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    sys.exit(128 + os.WTERMSIG(status))
sys.exit(os.WEXITSTATUS(status))
