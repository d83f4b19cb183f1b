"""The images an extraction run reads: resolving the ``images`` argument into keyed sources.

Sources are image files (a folder searched recursively, a glob or brace pattern, a list file)
or the image members of WebDataset tars in the img2dataset layout (``<key>.jpg`` beside
``<key>.json`` and ``<key>.txt``). A tar member is read by seeking to its byte range, so work
can be cut by key, independently of which tar holds an image.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import braceexpand

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TAR_SUFFIX = ".tar"
_GLOB_CHARS = frozenset("*?[{")
# WebDataset's reading of a member name: the key ends at the first dot of the file name.
_TAR_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True)
class Source:
    """One input image and the key its samples are stored under.

    Attributes:
        key: The image's key: its path relative to the input root without the extension, or
            the WebDataset key of a tar member. Unique within a run.
        path: The image file, or the tar that holds it.
        member: The member's name inside ``path`` when ``path`` is a tar, else None.
        offset: Byte offset of the member's data inside the tar.
        size: Byte size of the member's data.
    """

    key: str
    path: str
    member: str | None = None
    offset: int = 0
    size: int = 0

    @property
    def where(self) -> str:
        """The file (``a/b.jpg``) or tar member (``x.tar:000123.jpg``), for messages."""
        return self.path if self.member is None else f"{self.path}:{self.member}"

    def read(self) -> bytes:
        """The image file's bytes."""
        with open(self.path, "rb") as file:
            if self.member is None:
                return file.read()
            file.seek(self.offset)
            data = file.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.where}: tar ends {self.size - len(data)} bytes early")
        return data


@dataclass(frozen=True)
class SkippedInput:
    """An input left out, with a short ``kind`` to count by and a ``detail`` for people."""

    where: str
    kind: str  # unreadable | too small | too large | duplicate key | missing | not finite
    detail: str


@dataclass(frozen=True)
class Listing:
    """The sources of a run, sorted by key, and the inputs left out while listing."""

    sources: list[Source]
    skipped: list[SkippedInput]


def list_sources(spec: str) -> Listing:
    """Resolve the ``images`` argument into keyed sources, sorted by key.

    ``spec`` is a folder (images under it, recursively), an image or ``.tar`` file, a glob or
    brace pattern of images and/or tars (``shards/{00000..00099}.tar``), or a text file with
    one image or tar path per line (relative to the file; ``#`` starts a comment). Image keys
    are paths relative to the folder given (or the deepest folder holding every image)
    without the extension. Of several inputs with one key, the first by location is kept and
    the others are listed as skipped.

    Raises:
        FileNotFoundError: ``spec`` names no image at all.
    """
    spec_path = Path(spec)
    skipped: list[SkippedInput] = []
    if spec_path.is_dir():
        files = [p for p in spec_path.rglob("*") if p.is_file() and _is_image(p)]
        if not files:
            raise FileNotFoundError(_nothing_in_folder(spec_path))
        candidates = _image_sources(files, root=spec_path)
    else:
        if spec_path.is_file() and not (_is_image(spec_path) or _is_tar(spec_path)):
            paths = _read_list_file(spec_path, skipped)
        else:
            paths = _expand(spec)
        images = [p for p in paths if _is_image(p)]
        root = Path(os.path.commonpath([p.parent for p in images])) if images else None
        candidates = _image_sources(images, root) if root else []
        candidates += [source for p in paths if _is_tar(p) for source in _tar_sources(p)]
    if not candidates:
        raise FileNotFoundError(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) or image tars match {spec!r}"
        )
    sources = _unique_keys(candidates, skipped)
    for skip in skipped:
        log.warning("skipping %s: %s (%s)", skip.where, skip.kind, skip.detail)
    return Listing(sources, skipped)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _is_tar(path: Path) -> bool:
    return path.suffix.lower() == TAR_SUFFIX


def _nothing_in_folder(folder: Path) -> str:
    tars = sorted(folder.rglob(f"*{TAR_SUFFIX}"))
    if tars:
        return (
            f"no image files in folder {str(folder)!r}, but {len(tars)} .tar file(s): give "
            f"{str(folder / '*.tar')!r} to read them as image shards"
        )
    return f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {str(folder)!r}"


def _expand(pattern: str) -> list[Path]:
    """Files a glob or brace pattern names (or the one file it is)."""
    if not _GLOB_CHARS & set(pattern):
        return [Path(pattern).absolute()] if Path(pattern).is_file() else []
    paths = {
        Path(match).absolute()
        for part in braceexpand.braceexpand(pattern)
        for match in glob.glob(part, recursive=True)
    }
    return sorted(p for p in paths if p.is_file())


def _read_list_file(list_file: Path, skipped: list[SkippedInput]) -> list[Path]:
    """The image and tar paths of a list file; missing ones go to ``skipped``."""
    paths = []
    for line_number, line in enumerate(list_file.read_text().splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        path = (list_file.parent / entry).absolute()
        where = f"line {line_number} of {list_file}"
        if not path.is_file():
            skipped.append(SkippedInput(str(path), "missing", where))
        elif not (_is_image(path) or _is_tar(path)):
            skipped.append(SkippedInput(str(path), "not an image or tar", where))
        else:
            paths.append(path)
    return paths


def _image_sources(files: list[Path], root: Path) -> list[Source]:
    return [Source(p.relative_to(root).with_suffix("").as_posix(), str(p)) for p in files]


def _tar_sources(tar_path: Path) -> list[Source]:
    """The image members of a WebDataset tar, keyed as WebDataset keys them.

    Only the headers are read (tarfile seeks past each member's data).
    """
    sources = []
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                match = _TAR_MEMBER.match(member.name)
                if member.isfile() and match and f".{match.group(2).lower()}" in IMAGE_SUFFIXES:
                    sources.append(
                        Source(match.group(1), str(tar_path), member.name, member.offset_data,
                               member.size)
                    )
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"cannot list image tar {tar_path}: {err}") from err
    return sources


def _unique_keys(candidates: list[Source], skipped: list[SkippedInput]) -> list[Source]:
    """One source per key (the first by location), in key order; the rest go to ``skipped``."""
    ordered = sorted(candidates, key=lambda source: (source.key, source.where))
    unique = []
    for key, group in groupby(ordered, key=lambda source: source.key):
        kept, *others = list(group)
        unique.append(kept)
        skipped += [
            SkippedInput(other.where, "duplicate key", f"key {key!r} is also {kept.where}")
            for other in others
        ]
    return unique
