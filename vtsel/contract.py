"""The feature contract: which encoder, grid and width a model's tokens come from, and the one
check of it.

Every reader of features holds one: the training shards and their manifest, a judge, the
held-out shards of ``vtsel eval``, an exported selector, the VLM integration's tower and
``vtsel visualize``'s encoder. Torch-free, so the inference side can use it.
"""

from __future__ import annotations

from dataclasses import dataclass


class FeatureContractError(ValueError):
    """Features of another shape or encoder than a model was built for.

    Not a corrupt sample to skip: every sample would fail the same way, so the run must stop.
    """


@dataclass(frozen=True)
class FeatureContract:
    """What features must look like: a grid of tokens of one width, from one encoder.

    Per-token normalisation is not part of it: every vtsel model applies the same one inside
    (``vtsel.models.config.NORMALISATION``), so raw features are what crosses the contract.
    """

    feature_dim: int
    """Width C of each token."""
    grid: tuple[int, int]
    """(H, W) token grid of one crop."""
    encoder: str | None = None
    """Encoder id (``vtsel extract``'s manifest); None where it is not recorded."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def describe(self) -> str:
        """``a 16x16 grid of 384-wide tokens (encoder 'x')``."""
        height, width = self.grid
        encoder = f" (encoder {self.encoder!r})" if self.encoder is not None else ""
        return f"a {height}x{width} grid of {self.feature_dim}-wide tokens{encoder}"

    def differences(self, found: FeatureContract) -> list[str]:
        """What ``found`` has otherwise: width, grid, and the encoder where both name one."""
        differing = []
        if found.feature_dim != self.feature_dim:
            differing.append(f"feature_dim {found.feature_dim} vs {self.feature_dim}")
        if found.grid != self.grid:
            differing.append(
                f"grid {found.grid[0]}x{found.grid[1]} vs {self.grid[0]}x{self.grid[1]}"
            )
        if None not in (found.encoder, self.encoder) and found.encoder != self.encoder:
            differing.append(f"encoder {found.encoder!r} vs {self.encoder!r}")
        return differing

    def check(self, found: FeatureContract, where: str, expected_as: str, advice: str) -> None:
        """Raise ``FeatureContractError`` if ``found`` does not fit this contract.

        The message reads ``<where> <found>, but <expected_as> <this> (<differences>):
        <advice>``, e.g. where = "sample 'k' in a.tar holds", expected_as = "the judge was
        trained on".
        """
        differing = self.differences(found)
        if differing:
            raise FeatureContractError(
                f"{where} {found.describe()}, but {expected_as} {self.describe()} "
                f"({'; '.join(differing)}): {advice}"
            )
