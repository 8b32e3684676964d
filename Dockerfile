# neuroseg BIDS App image. Build/run recipes: containers/README.md
#
#   docker build --build-arg VERSION="$(cat version)" -t neuroseg:"$(cat version)" .
#   docker build --build-arg VERSION="$(cat version)" --build-arg TORCH_VARIANT=cuda \
#                -t neuroseg:"$(cat version)"-cuda .
#
# BASE_IMAGE must provide Python 3.11 with the venv module (python3 -m venv)
# on a glibc >= 2.28 system, e.g. a debootstrapped Debian bookworm with
# python3, python3-venv, ca-certificates and passwd (see containers/README.md).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# Unprivileged run-time user (USER is set at the end); its HOME is /tmp.
# /work (sticky, world-writable like /tmp) is the default Nipype work folder when
# the output folder is mounted at /out (the app defaults to <output_dir>/../work).
RUN groupadd --gid 1000 neuroseg \
 && useradd --uid 1000 --gid neuroseg --home-dir /tmp --no-create-home \
            --shell /usr/sbin/nologin neuroseg \
 && mkdir -m 1777 /work

# ---- Dependencies layer: rebuilt only when requirements.txt or TORCH_VARIANT change.
# TORCH_VARIANT picks the PyTorch build:
#   cpu (default)   CPU-only wheel from https://download.pytorch.org/whl/cpu (small)
#   cuda            default PyPI wheel; pulls CUDA/cuDNN wheels (image several GB larger)
#   cu126, cu128..  that CUDA build from https://download.pytorch.org/whl/<variant>
# torch comes first from that index; `-r requirements.txt` then finds torch==X
# already satisfied (X+cpu / X+cuNNN count as X) and installs the rest from PyPI.
# A venv keeps this working on Debian's system Python (PEP 668) as on python:* images.
ARG TORCH_VARIANT=cpu
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv "${VIRTUAL_ENV}" \
 && pip install --no-cache-dir pip==26.3 \
 && case "${TORCH_VARIANT}" in \
        cuda) torch_index=https://pypi.org/simple ;; \
        cpu|cu[0-9]*) torch_index="https://download.pytorch.org/whl/${TORCH_VARIANT}" ;; \
        *) echo "TORCH_VARIANT must be cpu, cuda or cuNNN, got '${TORCH_VARIANT}'" >&2; exit 1 ;; \
    esac \
 && grep -E '^torch==' /tmp/requirements.txt > /tmp/torch-requirement.txt \
 && pip install --no-cache-dir --index-url "${torch_index}" -r /tmp/torch-requirement.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && pip check \
 && rm /tmp/requirements.txt /tmp/torch-requirement.txt

# ---- App layer: sources, `version` and `models/` end up in /opt/neuroseg.
# Nothing is fetched at run time: models are baked in and TemplateFlow is a
# read-only offline cache (a top-level `templateflow/` folder in the repo, if the
# project ships one, lands here; otherwise an offline stub is created).
ENV NEUROSEG_MODELS_DIR=/opt/neuroseg/models \
    NEUROSEG_CONTAINER=docker \
    TEMPLATEFLOW_HOME=/opt/neuroseg/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NIPYPE_NO_ET=1
WORKDIR /opt/neuroseg
COPY . /opt/neuroseg
RUN test -s version && test -d models \
 && pip install --no-cache-dir --no-deps . \
 && pip check \
 && rm -rf build ./*.egg-info \
 && mkdir -p "${TEMPLATEFLOW_HOME}" \
 && python -W ignore -c "import templateflow.api" \
 && find /opt/neuroseg \( \( -type d ! -perm -o=rx \) -o \( -type f ! -perm -o=r \) \) \
        -exec chmod a+rX {} + \
 && neuroseg --help > /dev/null

# ---- Runtime: unprivileged user; writable only /tmp (HOME, caches) and /work.
# OMP_NUM_THREADS is deliberately left unset (--nprocs/--omp-nthreads decide).
ENV HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache
USER 1000:1000
WORKDIR /tmp

# Declared last so that a new VERSION/VCS_REF does not invalidate the layers above.
# Pass the content of the top-level `version` file: --build-arg VERSION="$(cat version)"
ARG VERSION=0.0.0+unknown
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="neuroseg" \
      org.opencontainers.image.description="BIDS App: spinal cord (and MS lesion) segmentation in MRI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.neuroseg.torch-variant="${TORCH_VARIANT}"

ENTRYPOINT ["neuroseg"]
CMD ["--help"]
