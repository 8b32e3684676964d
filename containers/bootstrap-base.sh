#!/usr/bin/env bash
# Bootstrap the Dockerfile's BASE_IMAGE from Debian's own packages, without any
# container registry: a minimal Debian bookworm (Python 3.11) made with
# debootstrap and imported into the local podman/buildah storage.
#
#   sudo containers/bootstrap-base.sh [IMAGE]        # default localhost/debian-python:bookworm
#
# Environment: MIRROR (default http://deb.debian.org/debian), SUITE (bookworm),
# CONTAINER_CMD (podman; docker also has `import`), KEEP_ROOTFS=1 keeps the rootfs
# folder. Needs root (debootstrap, chroot) and the packages debootstrap + podman
# (apt-get install debootstrap podman). The result provides what the Dockerfile
# needs and nothing else: python3 (3.11) + python3-venv, ca-certificates and
# passwd (useradd/groupadd). ~150 MB.
set -euo pipefail

IMAGE=${1:-localhost/debian-python:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
CONTAINER_CMD=${CONTAINER_CMD:-podman}

if [ "$(id -u)" != 0 ]; then
    echo "bootstrap-base.sh: debootstrap needs root (run with sudo)" >&2
    exit 1
fi
for tool in debootstrap "$CONTAINER_CMD"; do
    command -v "$tool" >/dev/null || { echo "bootstrap-base.sh: $tool not found (apt-get install $tool)" >&2; exit 1; }
done

ROOTFS=$(mktemp -d "${TMPDIR:-/tmp}/neuroseg-base.XXXXXX")
cleanup() { [ "${KEEP_ROOTFS:-0}" = 1 ] || rm -rf "$ROOTFS"; }
trap cleanup EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    "$SUITE" "$ROOTFS" "$MIRROR"

# apt sources for later `apt-get update` inside derived images (debootstrap
# writes only the suite itself).
printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://security.debian.org/debian-security %s-security main\n' \
    "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" > "$ROOTFS/etc/apt/sources.list"

# Slim: no package caches/lists, logs, man pages, info, locales, docs (the
# copyright files stay), Python bytecode caches.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* \
       "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$ROOTFS/usr/lib/python3" "$ROOTFS/usr/lib/python3.11" -depth -name __pycache__ -type d \
     -exec rm -rf {} + 2>/dev/null || true
# Files that debootstrap fills in from the build host.
: > "$ROOTFS/etc/hostname"
rm -f "$ROOTFS/etc/resolv.conf"

tar -C "$ROOTFS" --numeric-owner --xattrs -c . \
  | "$CONTAINER_CMD" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $SUITE ($MIRROR) + python3 python3-venv ca-certificates passwd" \
        - "$IMAGE"
"$CONTAINER_CMD" run --rm --network none "$IMAGE" python3 -c 'import sys, venv, ensurepip; print(sys.version)'
echo "bootstrap-base.sh: $IMAGE ready"
