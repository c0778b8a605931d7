"""Run a command on a new pseudo-terminal and answer its passphrase prompts.

usage: python3 pty_answer.py ANSWER[,ANSWER...] COMMAND [ARG...]

Each time the command's terminal output shows another "Passphrase" or "passphrase" prompt
(case-insensitive "passphrase" followed by ": "), the next answer is typed, with a newline.
Prints everything the command wrote to the terminal and exits with its exit status. Bounded:
gives up after 60 seconds without output.
"""
import os
import pty
import select
import sys

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
        os.write(fd, answers[asked].encode() + b"\n")
        asked += 1
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
