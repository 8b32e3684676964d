# neuroseg BIDS App image. Build/run recipes: containers/README.md
#
#   docker build --build-arg VERSION="$(cat version)" -t neuroseg:"$(cat version)" .
#   docker build --build-arg VERSION="$(cat version)" --build-arg TORCH_VARIANT=cuda \
#                -t neuroseg:"$(cat version)"-cuda .
#   make image          # podman, offline base from Debian packages (containers/bootstrap-base.sh)
#
# BASE_IMAGE must provide Python 3.11 with the venv module (python3 -m venv)
# on a glibc >= 2.28 system, e.g. a debootstrapped Debian bookworm with
# python3, python3-venv, ca-certificates and passwd (containers/bootstrap-base.sh).
# Both stages use it: the venv made in the builder links to the base's python3.
#
# Two stages: `builder` makes /opt/venv (pip, wheels, sources, build isolation)
# and /opt/neuroseg; the runtime stage is the base plus those two folders,
# without pip/setuptools, bytecode caches, test suites or C/C++ headers.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ============================================================== builder stage
FROM ${BASE_IMAGE} AS builder

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]

ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# ---- Dependencies layer: rebuilt only when requirements.txt, TORCH_VARIANT or
# TORCH_WHEEL_DIR change. TORCH_VARIANT picks the PyTorch build:
#   cpu (default)   CPU-only wheel from https://download.pytorch.org/whl/cpu (small)
#   cuda            default PyPI wheel; pulls CUDA/cuDNN wheels (image several GB larger)
#   cu126, cu128..  that CUDA build from https://download.pytorch.org/whl/<variant>
#   local           the torch==X wheel from the folder TORCH_WHEEL_DIR (default /wheels;
#                   `podman build -v /path/to/wheels:/wheels:ro ...`), its dependencies
#                   from the package index (hosts that cannot reach download.pytorch.org)
# torch comes first; `-r requirements.txt` then finds torch==X already satisfied
# (X+cpu / X+cuNNN count as X) and installs the rest from the package index.
# A venv keeps this working on Debian's system Python (PEP 668) as on python:* images.
#
# Package index: PyPI unless pip is told otherwise. Optional build secrets (never
# stored in a layer): `--secret id=pip_cert,src=CA-BUNDLE` (TLS-intercepting proxy)
# and `--secret id=pip_conf,src=pip.conf` (another index or mirror, credentials).
ARG TORCH_VARIANT=cpu
ARG TORCH_WHEEL_DIR=/wheels
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_conf \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
 && case "${TORCH_VARIANT}" in \
        cuda) set -- --index-url https://pypi.org/simple ;; \
        cpu|cu[0-9]*) set -- --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" ;; \
        local) set -- --no-index --no-deps --find-links "${TORCH_WHEEL_DIR}" ;; \
        *) echo "TORCH_VARIANT must be cpu, cuda, cuNNN or local, got '${TORCH_VARIANT}'" >&2; exit 1 ;; \
    esac \
 && python3 -m venv "${VIRTUAL_ENV}" \
 && pip install pip==26.3 \
 && grep -E '^torch==' /tmp/requirements.txt > /tmp/torch-requirement.txt \
 && pip install "$@" -r /tmp/torch-requirement.txt \
 && if [ "${TORCH_VARIANT}" = local ]; then pip install -r /tmp/torch-requirement.txt; fi \
 && pip install -r /tmp/requirements.txt \
 && pip check \
 && rm /tmp/requirements.txt /tmp/torch-requirement.txt

# ---- App layer: bids_app is pip-installed into the venv (not editable); only
# `version`, `models/`, `templateflow/` and LICENSE go to /opt/neuroseg.
# Nothing is fetched at run time: models are baked in and TemplateFlow is a
# read-only offline cache (the repo's top-level `templateflow/` folder, if the
# project ships one, lands here; otherwise an offline stub is created).
ENV NEUROSEG_MODELS_DIR=/opt/neuroseg/models \
    TEMPLATEFLOW_HOME=/opt/neuroseg/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NIPYPE_NO_ET=1
COPY . /src
WORKDIR /src
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_conf \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
 && test -s version && test -d models \
 && pip install --no-deps . \
 && pip check \
 && pip freeze --exclude-editable > /tmp/requirements.lock \
 && mkdir -p /opt/neuroseg/templateflow \
 && cp -a version LICENSE models /opt/neuroseg/ \
 && mv /tmp/requirements.lock /opt/neuroseg/ \
 && if [ -d templateflow ]; then cp -a templateflow/. /opt/neuroseg/templateflow/; fi \
 && python -W ignore -c "import templateflow.api" \
 && neuroseg --help > /dev/null
# Slim the venv: no installers, bytecode caches, package test suites, C/C++
# headers, CMake files or the C++ test binaries shipped in the torch wheel.
# Then make everything world-readable (any --user may run the image).
# BYTECODE=1 precompiles the venv again (+200 MB; each Python process then
# starts ~7 s sooner: the image is read-only, so bytecode is never cached).
ARG BYTECODE=0
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && python -m pip uninstall --yes setuptools wheel \
 && python -m pip uninstall --yes pip \
 && rm -rf "${VIRTUAL_ENV}"/share/man \
 && find "${VIRTUAL_ENV}" -depth \( -name __pycache__ -o -name tests -o -name '*.pyc' \) \
        -exec rm -rf {} + \
 && rm -rf "${site}"/torch/include "${site}"/torch/share/cmake "${site}"/torch/test \
 && find "${site}/torch/bin" -maxdepth 1 -type f \( -name 'test_*' -o -name '*Test' -o -name 'protoc*' \
        -o -name '*.pt' -o -name '*.ptl' \) -delete \
 && if [ "${BYTECODE}" = 1 ]; then { python -m compileall -q -j 0 --invalidation-mode unchecked-hash "${VIRTUAL_ENV}/lib" > /dev/null || true; }; fi \
 && find /opt/venv /opt/neuroseg \( \( -type d ! -perm -o=rx \) -o \( -type f ! -perm -o=r \) \) \
        -exec chmod a+rX {} + \
 && python -c "import torch, bids_app.cli, monai, nipype, SimpleITK, nibabel, pandas, sklearn"

# ============================================================== runtime stage
FROM ${BASE_IMAGE}

ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    NEUROSEG_MODELS_DIR=/opt/neuroseg/models \
    NEUROSEG_CONTAINER=docker \
    TEMPLATEFLOW_HOME=/opt/neuroseg/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NIPYPE_NO_ET=1

# Unprivileged run-time user (USER is set below); its HOME is /tmp.
# /work (sticky, world-writable like /tmp) is the default Nipype work folder when
# the output folder is mounted at /out (the app defaults to <output_dir>/../work).
# With --read-only, mount it: --tmpfs /work or -v HOST_DIR:/work.
RUN groupadd --gid 1000 neuroseg \
 && useradd --uid 1000 --gid neuroseg --home-dir /tmp --no-create-home \
            --shell /usr/sbin/nologin neuroseg \
 && mkdir -m 1777 /work \
 && rm -f /var/log/lastlog /var/log/faillog

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/neuroseg /opt/neuroseg

# ---- Runtime: unprivileged user; writable only /tmp (HOME, caches) and /work.
# OMP_NUM_THREADS is deliberately left unset (--nprocs/--omp-nthreads decide).
# USER: `--user UID:GID` of an arbitrary uid has no passwd entry, and getpass.getuser()
# (called by MONAI at import) then fails unless USER/LOGNAME is set.
ENV HOME=/tmp \
    USER=neuroseg \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache
USER 1000:1000
WORKDIR /tmp

# Declared last so that a new VERSION/VCS_REF does not invalidate the layers above.
# Pass the content of the top-level `version` file: --build-arg VERSION="$(cat version)"
ARG TORCH_VARIANT=cpu
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
