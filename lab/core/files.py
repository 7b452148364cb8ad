"""Writing state files so that an interrupted run never leaves a half-written one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_files(out: Path, files: dict[str, str]) -> list[Path]:
    """Write each file atomically (temp name + rename); scripts get mode 0755."""
    written = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o755 if rel.endswith(".sh") else 0o644)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk says nothing of the file it filled: name it
            Path(tmp).unlink(missing_ok=True)
            if exc.filename:
                raise
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written
