#!/usr/bin/env bash
# Regenerates the tiny test models tests/fixtures/model/{f16,q2,q4,f16dense,mxfp4}/model.gguf
# (git-ignored, about 120 MB together) and checks each against its committed model.gguf.sha256.
#
# Idempotent: a recipe whose model.gguf already has the committed sha256 is skipped. Otherwise a
# venv .venv-fixtures/ (repo root, git-ignored) is created once with exact pins of gguf-py and
# its dependencies, and `tools/reference/model_fixtures.py --gguf-only` writes the file (numpy
# + gguf-py only; no torch or transformers). A hash mismatch after generation is an error.
#
# Needs: python3 (>= 3.11, for numpy 2.4.6) with the venv module, pip access to PyPI (or a
# wheel mirror), sha256sum. On a fresh Debian/Ubuntu machine:
#     apt-get install -y python3 python3-venv
# Usage (from anywhere): tools/make-test-models.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIXTURES="$ROOT/tests/fixtures/model"
VENV="$ROOT/.venv-fixtures"
RECIPES=(f16 q2 q4 f16dense mxfp4)
# gguf==0.19.0 requires numpy, pyyaml, requests, tqdm; requests pulls in the last four.
PINS=(
    gguf==0.19.0
    numpy==2.4.6
    PyYAML==6.0.4
    tqdm==4.70.1
    requests==2.34.2
    certifi==2026.10.19.post1
    charset-normalizer==3.5.3
    idna==3.20
    urllib3==2.8.0
)

die() {
    echo "make-test-models: error: $*" >&2
    exit 1
}

# Prints the committed hash of a recipe's model.gguf.
expected_sha() {
    local file="$FIXTURES/$1/model.gguf.sha256"
    [[ -f "$file" ]] || die "missing $file (committed hash of the $1 model)"
    cut -d' ' -f1 "$file"
}

actual_sha() {
    sha256sum "$1" | cut -d' ' -f1
}

is_current() {
    [[ -f "$FIXTURES/$1/model.gguf" ]] && [[ "$(actual_sha "$FIXTURES/$1/model.gguf")" == "$(expected_sha "$1")" ]]
}

ensure_venv() {
    if [[ -x "$VENV/bin/python" ]] && [[ -f "$VENV/.pins" ]] && [[ "$(cat "$VENV/.pins")" == "${PINS[*]}" ]]; then
        return
    fi
    command -v python3 >/dev/null || die "python3 not found; on Debian/Ubuntu: apt-get install -y python3 python3-venv"
    rm -rf "$VENV"
    echo "make-test-models: creating $VENV"
    if ! python3 -m venv "$VENV"; then
        rm -rf "$VENV"
        die "'python3 -m venv' failed; on Debian/Ubuntu: apt-get install -y python3-venv"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" ||
        die "pip install of ${PINS[*]} into $VENV failed"
    echo "${PINS[*]}" >"$VENV/.pins"
}

todo=()
for recipe in "${RECIPES[@]}"; do
    expected_sha "$recipe" >/dev/null
    if is_current "$recipe"; then
        echo "make-test-models: $recipe/model.gguf is up to date"
    else
        todo+=("$recipe")
    fi
done
[[ ${#todo[@]} -eq 0 ]] && exit 0

ensure_venv
"$VENV/bin/python" "$ROOT/tools/reference/model_fixtures.py" --gguf-only --out "$FIXTURES" --recipes "${todo[@]}"

failed=0
for recipe in "${todo[@]}"; do
    got="$(actual_sha "$FIXTURES/$recipe/model.gguf")"
    want="$(expected_sha "$recipe")"
    if [[ "$got" == "$want" ]]; then
        echo "make-test-models: $recipe/model.gguf ok ($got)"
    else
        echo "make-test-models: error: $recipe/model.gguf has sha256 $got, expected $want" \
            "(tests/fixtures/model/$recipe/model.gguf.sha256). The generator or its pinned" \
            "packages (${PINS[*]}) no longer reproduce the committed model." >&2
        failed=1
    fi
done
exit "$failed"
