#!/usr/bin/env bash
# Validates hub/openapi.json against the OpenAPI 3.1 specification with openapi-spec-validator
# (installed from PyPI into a throwaway virtualenv under target/). The Rust tests in
# hub/src/api/mod.rs check that the document and the router agree; this checks the document
# against the specification's own schema.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/openapi-venv
if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'openapi-spec-validator>=0.7,<1'
fi
"$venv/bin/openapi-spec-validator" hub/openapi.json
