# vtsel on NVIDIA GPUs. Build:  docker build -t vtsel .
# Run:  docker run --gpus all --shm-size 16g -v $PWD/data:/data -v $PWD/runs:/runs vtsel \
#         fit --config conf/llava_next.yaml --data.train_shards /data/shards/train ...
# Volumes: /data holds images and feature shards, /runs TensorBoard logs and checkpoints.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# The base image pins the distribution; its python3 is whatever that release ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 vtsel \
    && python3 -m venv /opt/vtsel \
    && mkdir -p /data /runs && chown vtsel:vtsel /data /runs
ENV PATH=/opt/vtsel/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY vtsel ./vtsel
COPY conf ./conf
# torch and torchvision come pinned from pyproject.toml (PyPI's Linux wheels are CUDA builds);
# [train] is the `vtsel` command, [hf] the Hugging Face encoders and VLM integration.
RUN pip install "./[train,hf]"

USER 1000
VOLUME ["/data", "/runs"]
ENTRYPOINT ["vtsel"]
CMD ["--help"]
