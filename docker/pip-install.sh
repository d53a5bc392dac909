#!/bin/sh
# Installs one hash-locked requirements file into the image's venv, the same way for every layer:
#   RUN --mount=type=secret,id=ca ... sh pip-install.sh [FILE]     # FILE: requirements.txt beside it
set -eu
# The proxy's CA comes as a BuildKit secret, so nothing of it lands in a layer; empty: none needed.
if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi
# The lock pins every package with its hashes, so pip resolves nothing. No build isolation: the one
# sdist (fusepy) builds with the setuptools an earlier layer installed, not one fetched at build time.
exec pip install --require-hashes --no-deps --no-build-isolation -r "${1:-$(dirname "$0")/requirements.txt}"
