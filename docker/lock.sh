#!/bin/sh
# `make lock`: resolves each requirement set into a hashed lock, in docker/Dockerfile's lock stage.
#   sh lock.sh IN_DIR OUT_DIR     # IN_DIR/<set>.in -> OUT_DIR/<set>.lock
# requirements: the training image; submit-v2: the SDK v2 submitter; mlflow: the tracking server.
set -eu
in=$1 out=$2
sh "$in/pip-install.sh" "$in/lock-tools.txt"
# uv reads the proxy's CA from SSL_CERT_FILE (pip-install.sh sets pip's own).
if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi
mkdir -p "$out"
for name in requirements submit-v2 mlflow; do
    # linux/amd64 with Debian 12's glibc: a universal lock picks versions with no wheel for the image.
    uv pip compile "$in/$name.in" --python-platform x86_64-manylinux_2_36 --python-version 3.11 \
        --generate-hashes --custom-compile-command "make lock" --quiet -o "$out/$name.lock"
done
