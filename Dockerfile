# syntax=docker/dockerfile:1.7
#
# Images of textrec, one build target each:
#
#   docker build --target operator    -t textrec-operator:0.1.0      .   # ~40 MB, no libtorch
#   docker build --target worker-cpu  -t textrec-worker:0.1.0        .   # serving, CPU training
#   docker build --target worker-cuda -t textrec-worker:0.1.0-cuda   .   # GPU training/serving
#
# All run as UID/GID 65532 (non-root, numeric so that runAsNonRoot can verify it) and work with
# a read-only root filesystem (the operator mounts an emptyDir at /tmp where scratch is needed).
#
# The worker links libtorch 2.11.0 (tch =0.24.0), taken from the PyPI `torch` wheel: the binary is built against the wheel's headers and libraries
# (LIBTORCH_USE_PYTORCH=1), and the runtime image carries only the wheel's lib/ folder (plus, for
# CUDA, the NVIDIA libraries the wheel depends on), not Python.
#
# Cargo's registry and target folders live in BuildKit cache mounts, so rebuilds after a code
# change recompile only the workspace crates.

ARG RUST_VERSION=1.95
ARG TORCH_VERSION=2.11.0
# The default PyPI wheel of torch 2.11 for x86_64 Linux is built for CUDA 13 and depends on the
# nvidia-* wheels; the CPU-only wheel (no CUDA libraries at all, ~10x smaller) comes from the
# PyTorch CPU index. Point either at a mirror with --build-arg.
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX_URL=
# `base` flavour: the NVIDIA container runtime hooks and environment, without CUDA's own copies
# of cuBLAS/cuDNN (the torch wheel brings matching versions of those). Any driver >= 580 works.
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# Build environment: Rust, protoc (the worker's gRPC code), a C++ compiler (tch's shim) and
# Python (to install the torch wheel).
FROM rust:${RUST_VERSION}-slim-bookworm AS rust-base
# Debian package versions are not pinned: bookworm's archive replaces them with each point
# release (pinned versions would stop resolving); the suite pins the major versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates g++ make pkg-config protobuf-compiler python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# ---------------------------------------------------------------------------------------------
# The operator: no libtorch (it builds only the operator and the contract crates).
FROM rust-base AS operator-build
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=textrec-target-operator,sharing=locked \
    cargo build --release --locked -p textrec-operator \
 && install -D -m 0755 target/release/textrec-operator /out/textrec-operator

# distroless/cc: glibc, libgcc, CA certificates and nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
LABEL org.opencontainers.image.title="textrec-operator" \
      org.opencontainers.image.description="Kubernetes operator for textrec: TrainingRun and ModelDeployment" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=operator-build /out/textrec-operator /usr/local/bin/textrec-operator
USER 65532:65532
# Metrics, /healthz and /readyz.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/textrec-operator"]
CMD ["run"]

# ---------------------------------------------------------------------------------------------
# libtorch from the torch wheel, CPU and CUDA flavours, in a venv at /opt/venv.
FROM rust-base AS torch-cpu
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX_URL
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_CPU_INDEX_URL}" "torch==${TORCH_VERSION}"

FROM rust-base AS torch-cuda
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX_URL
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ${TORCH_CUDA_INDEX_URL:+--index-url "${TORCH_CUDA_INDEX_URL}"} "torch==${TORCH_VERSION}"

# ---------------------------------------------------------------------------------------------
# The worker, built once per torch flavour (the CUDA image ships libtorch_cuda, which the worker
# loads at start-up where an NVIDIA driver is present; the CPU wheel has none, so that image
# cannot use a GPU). Separate target caches: the two must not mix.
# The runtime layout keeps the wheel's relative paths (torch/lib next to nvidia/), because the
# wheel's libraries find the NVIDIA ones through RPATH $ORIGIN/../../nvidia/*/lib.
FROM torch-cpu AS worker-build-cpu
ENV LIBTORCH_USE_PYTORCH=1 PATH=/opt/venv/bin:$PATH
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=textrec-target-worker-cpu,sharing=locked \
    cargo build --release --locked -p textrec-worker \
 && install -D -m 0755 target/release/textrec-worker /out/bin/textrec-worker \
 && mkdir -p /out/libtorch/torch \
 && cp -a /opt/venv/lib/python3*/site-packages/torch/lib /out/libtorch/torch/ \
 && rm -f /out/libtorch/torch/lib/libtorch_python.so

FROM torch-cuda AS worker-build-cuda
ENV LIBTORCH_USE_PYTORCH=1 PATH=/opt/venv/bin:$PATH
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=textrec-target-worker-cuda,sharing=locked \
    cargo build --release --locked -p textrec-worker \
 && install -D -m 0755 target/release/textrec-worker /out/bin/textrec-worker \
 && mkdir -p /out/libtorch/torch \
 && cp -a /opt/venv/lib/python3*/site-packages/torch/lib /out/libtorch/torch/ \
 && cp -a /opt/venv/lib/python3*/site-packages/nvidia /out/libtorch/ \
 && rm -f /out/libtorch/torch/lib/libtorch_python.so \
 && find /out/libtorch/nvidia -name include -type d -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------
# Data the synthetic renderer reads: the training font packages, the fonts of the default
# `unseen-fonts` validation set (never trained on; the trainer refuses them for training), the
# fortunes corpus and the word list. Copied into both worker images from one Debian release,
# so CPU and CUDA trials see identical fonts and text whatever their base image. (Validation
# text, the package descriptions of /var/lib/dpkg/status, is each image's own.)
FROM debian:bookworm-slim AS training-assets
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      fonts-dkg-handwriting fonts-breip fonts-dancingscript fonts-humor-sans fonts-comic-neue \
      fonts-ecolier-court fonts-dejavu-core fonts-liberation2 \
      fonts-freefont-ttf fonts-havana fonts-cabinsketch fonts-bebas-neue \
      fortunes fortunes-min wamerican \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS worker-cpu
LABEL org.opencontainers.image.title="textrec-worker" \
      org.opencontainers.image.description="textrec worker (CPU): train, eval, recognize, serve" \
      org.opencontainers.image.licenses="Apache-2.0"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 textrec \
 && useradd --uid 65532 --gid 65532 --home-dir /home/textrec --create-home --shell /usr/sbin/nologin textrec
COPY --from=training-assets /usr/share/fonts /usr/share/fonts
COPY --from=training-assets /usr/share/games/fortunes /usr/share/games/fortunes
COPY --from=training-assets /usr/share/dict /usr/share/dict
COPY --from=worker-build-cpu /out/libtorch /opt/libtorch
COPY --from=worker-build-cpu /out/bin/textrec-worker /usr/local/bin/textrec-worker
ENV LD_LIBRARY_PATH=/opt/libtorch/torch/lib \
    HOME=/home/textrec
USER 65532:65532
WORKDIR /home/textrec
# gRPC (recognition API, grpc.health.v1) and HTTP (REST, demo page, metrics).
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/textrec-worker"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_BASE_IMAGE} AS worker-cuda
LABEL org.opencontainers.image.title="textrec-worker" \
      org.opencontainers.image.description="textrec worker (CUDA 13): train, eval, recognize, serve" \
      org.opencontainers.image.licenses="Apache-2.0"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 textrec \
 && useradd --uid 65532 --gid 65532 --home-dir /home/textrec --create-home --shell /usr/sbin/nologin textrec
COPY --from=training-assets /usr/share/fonts /usr/share/fonts
COPY --from=training-assets /usr/share/games/fortunes /usr/share/games/fortunes
COPY --from=training-assets /usr/share/dict /usr/share/dict
COPY --from=worker-build-cuda /out/libtorch /opt/libtorch
COPY --from=worker-build-cuda /out/bin/textrec-worker /usr/local/bin/textrec-worker
# The NVIDIA folders are also listed here for libraries loaded with dlopen (cuDNN's sub-libraries,
# NVRTC), which do not use the RPATH of the library that loads them.
ENV LD_LIBRARY_PATH=/opt/libtorch/torch/lib:/opt/libtorch/nvidia/cu13/lib:/opt/libtorch/nvidia/cudnn/lib:/opt/libtorch/nvidia/nccl/lib:/opt/libtorch/nvidia/cusparselt/lib:/opt/libtorch/nvidia/nvshmem/lib \
    HOME=/home/textrec \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
WORKDIR /home/textrec
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/textrec-worker"]
CMD ["--help"]
