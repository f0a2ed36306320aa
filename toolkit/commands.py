"""One way to run an external command for the build, the images and the test helpers.

:func:`run` runs an argv (never a shell string), captures its output as text and, when
it fails, raises :class:`CommandError` carrying the argv, the exit code and the output,
so every helper reports a failed ``git``, ``pex``, ``apt-get``, ``chroot``, ``podman``,
``initdb`` or ``pg_ctl`` the same way. The modules that run commands build their argv in
small pure functions (``pexbuild.pex_command``, ``postgres.initdb_command``,
``runtime_image.chroot_command``, ``engine.install_podman_command``...), unit-tested
without running anything.

Standard library only: ``toolkit.engine`` runs under any ``python3`` before a venv exists.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["OUTPUT_TAIL", "CommandError", "run"]

#: Characters of output a :class:`CommandError` message quotes (the attributes keep all).
OUTPUT_TAIL = 4000


class CommandError(RuntimeError):
    """A command could not start, timed out, or exited non-zero.

    ``argv`` is the command, ``returncode`` its exit code (``None`` when it never
    started or was killed at its timeout), ``stdout``/``stderr`` what it printed;
    ``note`` says anything the caller added (who it ran as, a log tail).
    """

    def __init__(self, argv: Sequence[str], returncode: int | None, *, stdout: str = "",
                 stderr: str = "", reason: str = "", note: str = "") -> None:
        self.argv = [str(arg) for arg in argv]
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.reason = reason or f"failed with exit code {returncode}"
        self.note = note
        super().__init__(self._message())

    @property
    def output(self) -> str:
        """What the command printed, stderr first (most tools explain failures there)."""
        return "\n".join(part for part in (self.stderr.strip(), self.stdout.strip()) if part)

    def _message(self) -> str:
        head = f"command {shlex.join(self.argv)} {self.reason}"
        if self.note:
            head += f" ({self.note})"
        output = self.output
        if len(output) > OUTPUT_TAIL:
            output = "..." + output[-OUTPUT_TAIL:]
        return f"{head}:\n{output or '(no output)'}"

    def with_note(self, note: str) -> CommandError:
        """The same failure with ``note`` added (e.g. a server log tail)."""
        joined = "; ".join(part for part in (self.note, note) if part)
        return CommandError(self.argv, self.returncode, stdout=self.stdout, stderr=self.stderr,
                            reason=self.reason, note=joined)


def run(argv: Sequence[str | Path], *, cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None, timeout: float | None = None,
        check: bool = True, note: str = "", **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with its output captured as text.

    Raises :class:`CommandError` if it cannot start or outlives ``timeout`` seconds,
    and (with ``check``, the default) if it exits non-zero. ``popen`` passes on to
    :func:`subprocess.run` (``user=``, ``group=``, ``extra_groups=``...).
    """
    cmd = [str(arg) for arg in argv]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=None if env is None else dict(env),
                              capture_output=True, text=True, timeout=timeout, check=False,
                              **popen)
    except subprocess.TimeoutExpired as exc:
        raise CommandError(cmd, None, stdout=_text(exc.stdout), stderr=_text(exc.stderr),
                           reason=f"timed out after {timeout:g} s", note=note) from exc
    except OSError as exc:
        raise CommandError(cmd, None, stderr=str(exc), reason="could not start",
                           note=note) from exc
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                           note=note)
    return proc


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
