#!/usr/bin/env python3
"""Test scaffolding for .ci/windows.sh: types a password at keyferry.exe's
console prompt under Wine.

Runs the command in a pseudo-terminal (Wine turns a terminal on standard
input into a Windows console, so GetConsoleMode succeeds and rpassword
reads CONIN$ without echo), waits for "password:", types the password and
Enter, and prints everything the program wrote. Exits with the program's
exit code; 124 if it did not finish within the timeout; 125 if no prompt
appeared.

usage: console_prompt.py PASSWORD COMMAND [ARG...]
"""
import os
import pty
import select
import sys
import time

TIMEOUT = 90


def main() -> int:
    password, argv = sys.argv[1], sys.argv[2:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    out = b""
    typed = False
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        if not typed and b"password:" in out:
            time.sleep(0.2)
            os.write(fd, password.encode() + b"\r")
            typed = True
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        sys.stdout.write(out.decode(errors="replace"))
        return 124
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(out.decode(errors="replace"))
    if not typed:
        return 125
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
