"""``vtsel extract``: encode images once into train/val feature shards, on any number of devices.

Training reads features, never pixels, so the (large, frozen) vision encoder runs once here
instead of every epoch. The work is cut into units of sorted source keys; each unit's tars appear
whole and are committed to a ledger, so a killed run resumes where it stopped and the samples do
not depend on how many processes wrote them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentParser

from vtsel.extract.crops import CenterCrop, CropPlan
from vtsel.extract.decode import MAX_IMAGE_PIXELS
from vtsel.extract.encoders import OpenClipEncoder, VisionEncoder
from vtsel.extract.engine import EncoderModule, ExtractionData, ExtractionPlan
from vtsel.extract.inputs import Source, list_sources
from vtsel.extract.manifest import build_manifest, check_out_apart_from_inputs, check_output
from vtsel.extract.progress import ImageProgress
from vtsel.extract.units import keys_fingerprint, plan_units
from vtsel.extract.writer import ExtractionSummary, UnitShardWriter
from vtsel.outputs import check_out_folder


def extract(
    images: str,
    out: str,
    encoder: VisionEncoder | None = None,
    crops: CropPlan | None = None,
    target_size: int = 112,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    batch_size: int = 16,
    shard_maxcount: int = 256,
    shard_maxsize: int = 1_000_000_000,
    unit_size: int = 1000,
    num_workers: int = 2,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    overwrite: bool = False,
    device: str = "auto",
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str = "auto",
) -> ExtractionSummary | None:
    """Encode images into ``<out>/train`` and ``<out>/val`` WebDataset feature shards.

    Every crop of every image becomes one sample (float16 features, the crop at
    ``target_size`` as the reconstruction target, and its metadata); ``<out>/manifest.json``
    records the encoder, the crop plan and this config. Images are split by source (a hash of
    the key and ``split_seed``), so no image lands on both sides and every run gives the same
    split. Unusable inputs are skipped, logged and counted in the final summary (and listed in
    ``<out>/skipped.json``) instead of stopping a long run.

    Rerunning the same command resumes: finished work units are kept, unfinished ones redone.
    A different config (or a changed set of inputs) into the same ``out`` is refused unless
    ``overwrite``.

    Args:
        images: A folder (searched recursively), an image, a glob or brace pattern of images
            and/or image tars (img2dataset's WebDataset layout, e.g. ``data/{00000..00099}.tar``),
            or a text file with one image or tar path per line (relative to that file).
        out: Output folder: ``train/`` and ``val/`` with tars and ``sizes.json``,
            ``manifest.json``, ``units/`` (the ledger of finished units), ``skipped.json``.
        encoder: The vision encoder, e.g. ``{class_path: OpenClipEncoder, init_args:
            {model_name: ViT-S-16}}``, ``LlavaNextVisionTower`` or ``InternVisionTower``.
            None: ``OpenClipEncoder()``, a random-weight open_clip ViT-S-16.
        crops: How each image is cut into encoder inputs: ``CenterCrop``, ``Resize``,
            ``LlavaNextAnyres`` or ``InternVLTiles``. None: ``CenterCrop()``.
        target_size: Side in pixels of the crop image stored with each sample (the image
            reconstructor's target).
        val_fraction: Share of source images sent to ``val``; with 2+ images and a positive
            value at least one image goes to ``val``.
        split_seed: Seed of the train/val hash; change it for another split.
        batch_size: Crops per encoder forward pass (per device).
        shard_maxcount: Samples per tar before the next tar is started.
        shard_maxsize: Bytes per tar (about) before the next tar is started.
        unit_size: Source images per work unit: the grain of resumption and of dealing work to
            processes. A killed run redoes at most one unit per process.
        num_workers: DataLoader worker processes per device that read, decode and crop images.
        max_image_pixels: Images with more pixels are skipped before decoding (a guard against
            decompression bombs).
        overwrite: Replace whatever ``out`` holds instead of resuming it.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``: shorthand for one process on one
            device (``accelerator`` and ``devices`` say the same in Lightning's terms).
        accelerator: Lightning accelerator: ``auto``, ``cpu``, ``gpu``, ...
        devices: Processes per node: a count, ``auto`` (every GPU), or device indices.
            ``accelerator=cpu, devices=2`` runs two CPU processes (DDP with gloo).
        num_nodes: Nodes of a multi-node run (launched by torchrun or SLURM, as for ``fit``).
        strategy: Lightning strategy; ``auto`` is DDP for several processes.
        precision: ``auto`` (bf16 autocast on GPUs that have it, else fp16 autocast on GPU,
            32-bit on CPU) or any Lightning precision such as ``bf16-mixed``.

    Returns:
        On global rank 0, what the shards hold and what was skipped; None on other ranks.
    """
    accelerator, devices = _placement(device, accelerator, devices)
    precision = _precision(precision, accelerator)
    out_dir = Path(out)
    listing = list_sources(images)
    encoder = OpenClipEncoder() if encoder is None else encoder
    crops = CenterCrop() if crops is None else crops
    manifest = build_manifest(
        encoder, crops, keys_fingerprint(listing.sources),
        target_size=target_size, val_fraction=val_fraction, split_seed=split_seed,
        unit_size=unit_size, max_image_pixels=max_image_pixels, precision=precision,
    )
    check_out_folder(out_dir)
    check_out_apart_from_inputs(out_dir, _input_folders(images, listing.sources))
    check_output(out_dir, manifest, overwrite)  # refuse a mismatch before any process starts
    units = plan_units(listing.sources, unit_size, val_fraction, split_seed)
    plan = ExtractionPlan(
        out_dir, units, manifest, overwrite, crops, target_size, batch_size, max_image_pixels
    )
    writer = UnitShardWriter(
        out_dir, manifest, len(units), listing.skipped, shard_maxcount, shard_maxsize
    )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        callbacks=[ImageProgress(), writer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=out_dir,
    )
    with warnings.catch_warnings():
        # the writer needs no sample indices (crop records travel in the batch), so Lightning's
        # complaint that it cannot infer them from an iterable dataset says nothing
        warnings.filterwarnings("ignore", "Couldn't infer the batch indices")
        trainer.predict(
            EncoderModule(encoder),
            datamodule=ExtractionData(plan, encoder, num_workers),
            return_predictions=False,
        )
    return writer.summary


def _input_folders(images: str, sources: list[Source]) -> set[Path]:
    """The folders the images come from: the folder given, and each source file's own."""
    folders = {Path(source.path).parent for source in sources}
    return folders | ({Path(images)} if Path(images).is_dir() else set())


def _placement(
    device: str, accelerator: str, devices: int | str | list[int]
) -> tuple[str, int | str | list[int]]:
    """Lightning's ``accelerator`` and ``devices`` from the ``device`` shorthand."""
    if device == "auto":
        return accelerator, devices
    kind, _, index = device.partition(":")
    wanted = {"cpu": "cpu", "cuda": "gpu"}.get(kind)
    if wanted is None or (index and not index.isdigit()):
        raise ValueError(f"device={device!r}: use auto, cpu, cuda or cuda:N")
    if accelerator not in ("auto", wanted, "cuda" if wanted == "gpu" else wanted):
        raise ValueError(f"device={device!r} and accelerator={accelerator!r} disagree")
    if index:
        if devices != 1:
            raise ValueError(f"device={device!r} is one GPU; it cannot go with devices={devices}")
        return wanted, [int(index)]
    return wanted, devices


def _precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 autocast on GPUs that support it, fp16 on older ones, 32-bit on CPU."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def extraction_parts(config: str | Path) -> tuple[VisionEncoder, CropPlan]:
    """The encoder and crop plan an extraction config (``conf/extract/*.yaml``) builds, for
    tools that must see images exactly as that extraction did (``vtsel visualize``)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(extract)
    built = parser.instantiate_classes(parser.parse_path(str(config)))
    encoder = OpenClipEncoder() if built.encoder is None else built.encoder
    return encoder, CenterCrop() if built.crops is None else built.crops
