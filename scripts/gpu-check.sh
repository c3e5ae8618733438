#!/usr/bin/env bash
# Builds, on this CPU machine, everything the GPU machine runs for the CUDA checks, into
# the ignored folder .gpu/, and prints the one command to run there.
#
# The GPU machine has CUDA 13, PyTorch and transformers but no Rust, and receives the
# checkout (at the same path) plus the carried ignored folders: so bertcls, the test and
# bench executables are built here (release, kernels embedded), stripped, and copied with
# what the run reads from ../shared (bert-base-chinese's config and tokenizer, the
# ChnSentiCorp splits) into .gpu/, kept under the 64 MiB a run may carry.
#
# There, `bash .gpu/run.sh` runs the CUDA op tests, the encoder check against HF
# transformers at BERT-base size (tools/reference/check_encoder_gpu.py) with PyTorch's
# timings, and the kernel and encoder benchmarks; logs go to $OUT (or .gpu/out).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dest=.gpu
shared="$repo/../shared"

scripts/install-cuda-toolchain.sh

# The executable of target $1 among cargo's JSON messages (a test build also builds the
# bertcls binary, so the target name matters).
executable() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])
' "$1"
}

echo "building bertcls, tests/backend_ops and benches/cuda_kernels (release)..."
cargo build --release --bin bertcls
tests=$(cargo test --release --no-run --test backend_ops --message-format=json | executable backend_ops)
benches=$(cargo bench --no-run --bench cuda_kernels --message-format=json | executable cuda_kernels)
rm -rf "$dest"
mkdir -p "$dest/bin"
copy_bin() { # strip the debug line tables: the run carries at most 64 MiB
    objcopy --strip-debug "$1" "$dest/bin/$2"
}
copy_bin target/release/bertcls bertcls
copy_bin "$tests" backend_ops
copy_bin "$benches" cuda_kernels
# The executables run here too, where their GPU parts skip: a build without kernels (no
# nvcc) would only be found out on the GPU machine otherwise.
# Captured first, then searched: `cmd | grep -q` under pipefail lets grep's early exit
# kill the test on a broken pipe and the guard pass without looking.
fatbin_check=$("$dest/bin/backend_ops" --exact kernel_fatbin_carries_sm80_sm90_and_ptx --nocapture 2>&1) || {
    printf '%s\n' "$fatbin_check" >&2
    echo "error: the fatbin check failed" >&2
    exit 1
}
if grep -q SKIPPED <<<"$fatbin_check"; then
    echo "error: bertcls was built without CUDA kernels" >&2
    exit 1
fi
"$dest/bin/backend_ops" -q

if [ -d "$shared/models/bert-base-chinese" ]; then
    m="$dest/shared/models/bert-base-chinese"
    mkdir -p "$m" "$dest/shared/data/ChnSentiCorp-files"
    for f in config.json tokenizer.json tokenizer_config.json vocab.txt; do
        cp "$shared/models/bert-base-chinese/$f" "$m/"
    done
    cp "$shared"/data/ChnSentiCorp-files/{train,validation,test}.jsonl "$dest/shared/data/ChnSentiCorp-files/"
    cp -r "$shared/data/ChnSentiCorp" "$dest/shared/data/"
    chmod -R u+w "$dest/shared"
else
    echo "warning: $shared not found: the transformers check and the ChnSentiCorp benchmarks will skip" >&2
fi

cat > "$dest/run.sh" <<'EOF'
#!/usr/bin/env bash
# The CUDA checks on the GPU machine, from the repo root: bash .gpu/run.sh
# Made by scripts/gpu-check.sh; exit status 0 when every check passes.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
# Here a missing GPU is a failure: the tests fail instead of skipping.
export BERTCLS_REQUIRE_GPU=1
export BERTCLS_CHECKOUT="$PWD"
# Other tests read ../shared beside the checkout, as here; these steps name .gpu/shared.
[ -e ../shared ] || ln -s "$PWD/.gpu/shared" ../shared 2>/dev/null || true
out="${OUT:-.gpu/out}"
mkdir -p "$out"
status=0
step() {
    local name=$1
    shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}
step gpu nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
step tests .gpu/bin/backend_ops --test-threads 1 --nocapture
step transformers python3 tools/reference/check_encoder_gpu.py --bertcls .gpu/bin/bertcls \
    --model-dir .gpu/shared/models/bert-base-chinese \
    --data .gpu/shared/data/ChnSentiCorp-files/test.jsonl --bench
# bertcls train on ChnSentiCorp with the encoder on the GPU (the random BERT-base the
# transformers step made: the wall time is the point, not the accuracy), the head's
# 30,000 steps on the CPU and then on the GPU.
train() {
    time .gpu/bin/bertcls train --model /tmp/bertcls-gpu-check/model \
        --data .gpu/shared/data/ChnSentiCorp --device cuda --max-batch-tokens 32768 \
        --no-cache --log-every 1000 --out "/tmp/bertcls-train-$1" --head-device "$1"
}
step train-head-cpu train cpu
step train-head-cuda train cuda
step bench-fp32 .gpu/bin/cuda_kernels --shared .gpu/shared --precision fp32
step bench-tf32 .gpu/bin/cuda_kernels --shared .gpu/shared --precision tf32 --texts 2000
echo "=== all: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
EOF
chmod +x "$dest/run.sh"

size=$(du -sm "$dest" | cut -f1)
echo
echo "$dest/ holds ${size} MiB:"
du -sh "$dest"/bin/* "$dest"/shared 2>/dev/null || true
if [ "$size" -ge 60 ]; then
    echo "error: $dest is ${size} MiB, too close to the 64 MiB a GPU run may carry" >&2
    exit 1
fi
echo
echo "On the GPU machine (the device tool: run in the repo root, carrying .gpu):"
echo "  run(command=\"bash .gpu/run.sh\", carry=[\".gpu\"], timeout_s=600)"
