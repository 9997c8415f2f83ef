"""The official MS MARCO passage-ranking training triples (``triples.train.small.tsv``, ~27 GB unpacked).

``ragcun data download msmarco`` fetches the archive from Microsoft's site where the network allows, unpacks
it without ever holding it in memory, and says which ``--train-data`` to use; where the network does not
allow, it says exactly what to run by hand.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from ragcun.files import atomic_path

TRIPLES_URL = "https://msmarco.z22.web.core.windows.net/msmarcoranking/triples.train.small.tar.gz"
TRIPLES_FILE = "triples.train.small.tsv"
ARCHIVE = "triples.train.small.tar.gz"


def manual_instructions(folder: Path) -> str:
    return (f"download it by hand and unpack it there:\n"
            f"  mkdir -p {folder}\n"
            f"  curl -L -o {folder / ARCHIVE} {TRIPLES_URL}\n"
            f"  tar -xzf {folder / ARCHIVE} -C {folder}\n"
            f"then train with --train-data triples:{folder / TRIPLES_FILE}")


def download_msmarco_triples(data_dir: str | os.PathLike, *, progress: Callable[[int, int | None], None] | None = None,
                             timeout: float = 30.0) -> Path:
    """Download and unpack the triples into ``data_dir/msmarco``; return the TSV's path (kept if present)."""
    import urllib.error
    import urllib.request

    folder = Path(data_dir).expanduser() / "msmarco"
    target = folder / TRIPLES_FILE
    if target.is_file():
        return target
    if os.environ.get("RAGCUN_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ValueError(f"MS MARCO triples are not in {folder} and downloads are disabled ($RAGCUN_OFFLINE); "
                         + manual_instructions(folder))
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / ARCHIVE
    if not archive.is_file():
        try:
            with atomic_path(archive) as partial, urllib.request.urlopen(TRIPLES_URL, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                done = 0
                with partial.open("wb") as out:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                if total is not None and partial.stat().st_size != total:
                    raise OSError(f"got {partial.stat().st_size} of {total} bytes")
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise ValueError(f"could not download {TRIPLES_URL} ({type(exc).__name__}: {exc}); "
                             + manual_instructions(folder)) from None
    try:
        with atomic_path(target) as tmp, tarfile.open(archive, "r|gz") as tar:  # streamed: one pass, constant memory
            for member in tar:
                if member.isfile() and Path(member.name).name == TRIPLES_FILE:
                    with tar.extractfile(member) as src, tmp.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
                    break
            else:
                raise ValueError(f"{archive} does not contain {TRIPLES_FILE}; " + manual_instructions(folder))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{archive} is damaged ({exc}); delete it and run the command again, or "
                         + manual_instructions(folder)) from None
    return target
