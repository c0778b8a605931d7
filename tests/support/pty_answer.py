"""Run a command on a new pseudo-terminal and answer its passphrase prompts.

usage: python3 pty_answer.py ANSWER[,ANSWER...] COMMAND [ARG...]

Each time the command's terminal output shows another "Passphrase" or "passphrase" prompt
(case-insensitive "passphrase for" or "repeat it:"), the next answer is typed, with a
newline, once the terminal's echo is off (waiting at most 5 seconds for it).
Prints everything the command wrote to the terminal and exits with its exit status. Bounded:
gives up after 60 seconds without output.
"""
import os
import pty
import select
import sys
import termios
import time

answers = sys.argv[1].split(",")
argv = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
out = b""
asked = 0
while True:
    ready, _, _ = select.select([fd], [], [], 60)
    if not ready:
        break
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    out += data
    prompts = out.lower().count(b"passphrase for") + out.lower().count(b"repeat it:")
    while asked < prompts and asked < len(answers):
        # Type only once the prompt has turned echo off, as a person would after reading
        # it: bytes that arrive before that are echoed by the terminal, not by the program.
        for _ in range(500):
            if not termios.tcgetattr(fd)[3] & termios.ECHO:
                break
            time.sleep(0.01)
        os.write(fd, answers[asked].encode() + b"\n")
        asked += 1
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
