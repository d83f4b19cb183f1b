"""Turn a user's shard spec into a list of shard URLs and count the samples they hold.

Specs are what a config or command line carries: a glob, a brace pattern, a directory, an
``https://`` URL or a ``pipe:`` command, several joined with ``::``. Counting happens here, up
front, because a streaming reader cannot know an epoch's length and DDP needs every rank to agree
on it before the first batch.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from vtsel.data.format import read_sizes

log = logging.getLogger("vtsel.data")

SPEC_SEPARATOR = "::"
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ShardSet:
    """The shards one split reads and how many samples they hold."""

    spec: str
    urls: list[str]
    num_samples: int
    shard_sizes: list[int] | None  # per URL, in order; None when the count came from an override


def is_remote(url: str) -> bool:
    """Remote shards are handed to WebDataset as they are: it opens them itself."""
    return url.startswith("pipe:") or "://" in url


def _resolve_one(pattern: str) -> list[str]:
    """One brace-free pattern: a remote URL, a directory of tars, a glob, or a file path."""
    if is_remote(pattern):
        return [pattern]
    path = Path(pattern).expanduser()
    if path.is_dir():
        return sorted(str(p) for p in path.glob("*.tar"))
    if _GLOB_CHARS & set(pattern):
        return sorted(glob.glob(str(path)))
    return [str(path)] if path.is_file() else []


def resolve_shard_urls(spec: str) -> list[str]:
    """All shard URLs a spec names, in a stable order; raise if a part of it names none."""
    urls: list[str] = []
    for part in spec.split(SPEC_SEPARATOR):
        found = [url for pattern in braceexpand.braceexpand(part) for url in _resolve_one(pattern)]
        if not found:
            raise FileNotFoundError(f"no shards match {part!r} (from shard spec {spec!r})")
        urls.extend(found)
    commands = [url for url in urls if url.startswith("pipe:")]
    if commands:  # a config from elsewhere can run anything this way: say what will run
        log.warning(
            "shard spec runs %d shell command(s) to read its tars, e.g. %r",
            len(commands), commands[0].removeprefix("pipe:"),
        )
    return urls


def _sizes_from_json(urls: list[str]) -> list[int]:
    """Each local shard's count from the ``sizes.json`` in its own folder."""
    sizes_by_dir: dict[Path, dict[str, int]] = {}
    counts = []
    for url in urls:
        path = Path(url)
        if path.parent not in sizes_by_dir:
            sizes_by_dir[path.parent] = read_sizes(path.parent)
        if path.name not in sizes_by_dir[path.parent]:
            raise ValueError(
                f"{path.name} is not listed in {path.parent / 'sizes.json'}: re-run extraction "
                f"or add its sample count there"
            )
        counts.append(sizes_by_dir[path.parent][path.name])
    return counts


def load_shard_set(spec: str, num_samples: int | None) -> ShardSet:
    """Resolve ``spec``; count its samples from ``sizes.json`` unless ``num_samples`` is given.

    Remote shards have no ``sizes.json`` we can read, so they need ``num_samples``.
    """
    urls = resolve_shard_urls(spec)
    if num_samples is not None:
        return ShardSet(spec, urls, num_samples, shard_sizes=None)
    remote = [url for url in urls if is_remote(url)]
    if remote:
        raise ValueError(
            f"cannot count the samples of remote shard(s) such as {remote[0]!r}: set the split's "
            f"num_samples (e.g. --data.train_num_samples) to the total they hold"
        )
    shard_sizes = _sizes_from_json(urls)
    return ShardSet(spec, urls, sum(shard_sizes), shard_sizes)
