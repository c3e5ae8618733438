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
# There, `bash .gpu/run.sh` runs, in this order and each step under `timeout`, the whole
# run under 8 minutes: `bertcls info` (stops at once if CUDA is not usable), the CUDA op
# tests, the encoder against HF transformers at BERT-base size, compute-sanitizer
# memcheck and racecheck over the CUDA op tests, a GPU too small for the batch,
# bf16/fp16 against fp32, the benchmarks (bertcls and PyTorch), `bertcls train` on
# ChnSentiCorp with the encoder on the GPU, and the bulk `encode --data`, `test` and
# `predict` there. The full log goes to $OUT/run.log (or .gpu/out), a step summary to $OUT/summary.txt.
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
# Made by scripts/gpu-check.sh. Every step runs under `timeout` and the whole run within
# BERTCLS_GPU_BUDGET_S seconds (default 450: under the 8 minutes it may take, leaving a
# 15-minute device lease time to fix and rerun); a step that would start past the budget
# is skipped and counted as a failure. BERTCLS_GPU_STEPS="op-tests memcheck" runs only
# the steps named. The full log is $OUT/run.log, one line per step
# in $OUT/summary.txt; exit status 0 when every step passes, 2 when CUDA is not usable.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-.gpu/out}"
mkdir -p "$out"
exec > >(tee "$out/run.log") 2>&1
tee_pid=$!
# The log's tee must drain before the run ends: close our end of it, then wait for it.
finish() {
    exec >&- 2>&-
    wait "$tee_pid" 2>/dev/null
    exit "$1"
}
: > "$out/summary.txt"
budget=${BERTCLS_GPU_BUDGET_S:-450}
status=0
export PYTHONUNBUFFERED=1
# Here a missing GPU is a failure: the tests fail instead of skipping.
export BERTCLS_REQUIRE_GPU=1
export BERTCLS_CHECKOUT="$PWD"
# fp32 must mean fp32: the override would turn TF32 on behind cuBLAS's back.
unset NVIDIA_TF32_OVERRIDE
# Other tests read ../shared beside the checkout, as on the build machine.
[ -e ../shared ] || ln -s "$PWD/.gpu/shared" ../shared 2>/dev/null || true

# libcublas.so.13: the CUDA toolkit, the Python environment's nvidia packages, or the
# loader's cache; its folder goes first on LD_LIBRARY_PATH (cudarc opens it by name).
find_cublas() {
    local d sub lib
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        if compgen -G "$d/libcublas.so.13*" >/dev/null; then echo "$d"; return 0; fi
    done
    for d in $(python3 -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
        for sub in nvidia/cu13/lib nvidia/cublas/lib; do
            if compgen -G "$d/$sub/libcublas.so.13*" >/dev/null; then echo "$d/$sub"; return 0; fi
        done
    done
    lib=$(ldconfig -p 2>/dev/null | awk '/libcublas\.so\.13 /{print $NF; exit}')
    if [ -n "$lib" ]; then dirname "$lib"; return 0; fi
    return 1
}
if cublas_dir=$(find_cublas); then
    echo "libcublas: $cublas_dir"
    export LD_LIBRARY_PATH="$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
    echo "libcublas: not found (/usr/local/cuda/lib64, the Python environment's nvidia/cu13/lib or nvidia/cublas/lib, ldconfig -p)"
fi
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)

# BERTCLS_GPU_STEPS, a space-separated list of step names, reruns only those steps (the
# ones a first run failed, after a fix), leaving the lease's minutes for them.
selected=${BERTCLS_GPU_STEPS:-}
# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND under timeout, within what is left of
# the budget; records the exit status and the seconds taken.
step() {
    local name=$1 limit=$2 left rc t0
    shift 2
    if [ -n "$selected" ] && [[ " $selected " != *" $name "* ]]; then
        echo "$name not selected" >> "$out/summary.txt"
        return 0
    fi
    left=$((budget - SECONDS))
    if [ "$left" -lt 10 ]; then
        echo "=== $name: not started, the run's budget of ${budget}s is spent"
        echo "$name skipped (budget spent)" >> "$out/summary.txt"
        status=1
        return 1
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "=== $name (at ${SECONDS}s, limit ${limit}s): $*"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "=== $name: timed out after ${limit}s"; fi
    echo "=== $name: exit $rc in $((SECONDS - t0))s"
    echo "$name exit $rc $((SECONDS - t0))s" >> "$out/summary.txt"
    [ "$rc" -eq 0 ] || status=1
    return "$rc"
}

# 1. Is CUDA usable at all? If not, nothing else can tell anything: stop at once. (info
#    needs a model folder: the tiny fixture, which travels with the checkout.)
info=$(timeout 30 .gpu/bin/bertcls info --model tests/fixtures/tiny/model 2>&1)
echo "$info"
if ! grep -q "^cuda usable: yes" <<<"$info"; then
    echo "=== stop: CUDA is not usable here ($(grep '^cuda usable' <<<"$info" || echo 'bertcls info failed')); nothing else was run"
    echo "info: CUDA not usable, stopped" >> "$out/summary.txt"
    finish 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true

shared=.gpu/shared
data="$shared/data/ChnSentiCorp-files"
check=(python3 tools/reference/check_encoder_gpu.py --bertcls .gpu/bin/bertcls
    --model-dir "$shared/models/bert-base-chinese" --data "$data/test.jsonl")
# The op tests on the GPU (the emulation's need g++ and ran on the build machine).
op_tests=(.gpu/bin/backend_ops --test-threads 1 --skip emulat)
sanitized_tests=(cuda_ops_match_cpu cuda_half_ops_match_cpu_on_rounded_inputs cuda_head_matches_cpu_head_and_adamw)

# 2. The CUDA ops against the CPU backend, the tiny encoder fixture, the head.
step op-tests 90 "${op_tests[@]}" --nocapture
# 3. The encoder against HF transformers at BERT-base size: fp32 within 2e-4 on [CLS].
step transformers 120 "${check[@]}"
# 4. compute-sanitizer over the op tests: out-of-bounds and uninitialised accesses, then
#    shared-memory races in our kernels. On the H200 racecheck reports hazards inside
#    cuBLAS's own split-K GEMMs (nvjet_sm90_*_splitK_*), code we neither wrote nor can
#    change, and excluding them (--kernel-name-exclude) crashed the sanitizer; so every
#    kernel is checked, hazards are listed, and the step fails on any hazard in a kernel
#    not named nvjet_*, or when the tests fail.
racecheck_ours() {
    local log=/tmp/bertcls-racecheck.log rc kernels
    "$sanitizer" --tool racecheck --print-limit 200 "${op_tests[@]}" "${sanitized_tests[@]}" \
        > "$log" 2>&1
    rc=$?
    cat "$log"
    kernels=$(grep -oE 'access at [A-Za-z0-9_]+' "$log" | awk '{print $3}' | sort -u)
    echo "racecheck: application exit $rc; kernels with hazards: $(tr '\n' ' ' <<<"$kernels")"
    [ "$rc" -eq 0 ] && { [ -z "$kernels" ] || ! grep -qv '^nvjet_' <<<"$kernels"; }
}
if [ -n "$sanitizer" ]; then
    step memcheck 90 "$sanitizer" --tool memcheck --error-exitcode 1 --print-limit 20 \
        "${op_tests[@]}" "${sanitized_tests[@]}"
    export -f racecheck_ours
    export sanitizer
    step racecheck 90 bash -c "$(declare -p op_tests sanitized_tests); racecheck_ours"
else
    echo "=== memcheck, racecheck: compute-sanitizer not found (PATH, /usr/local/cuda/bin)"
    echo "sanitizers missing" >> "$out/summary.txt"
    status=1
fi
# 4b. A GPU too small for the batch: one line naming --max-batch-tokens and a non-zero
#    exit, no panic, whether the GPU's index scratch (10^12 tokens) or the encoder's
#    workspace (10^9 tokens of the tiny model: 20 GB of scratch fits, a 1 TB workspace
#    does not) is refused.
out_of_memory() {
    local tokens err rc
    for tokens in 1000000000000 1000000000; do
        err=$(.gpu/bin/bertcls encode --model tests/fixtures/tiny/model --device cuda \
            --max-batch-tokens "$tokens" --out /tmp/bertcls-oom.safetensors "这家酒店很好" 2>&1)
        rc=$?
        echo "--max-batch-tokens $tokens: exit $rc: $err"
        if [ "$rc" -eq 0 ] || [ "$rc" -ge 100 ] || grep -q panicked <<<"$err" \
            || ! grep -q -- --max-batch-tokens <<<"$err"; then
            return 1
        fi
    done
}
export -f out_of_memory
step out-of-memory 60 bash -c out_of_memory
# 5. bf16 and fp16 against fp32: [CLS] tolerance and the head's test accuracy.
step precisions 90 "${check[@]}" --skip-hf --precisions bf16,fp16 --train-data "$data/train.jsonl"
# 6. Benchmarks: bertcls (kernels, GEMMs of every precision, encoder) and PyTorch fp32
#    (TF32 off) and fp16 with SDPA at 1x128, 32x128, 256x128.
step bench-fp32 75 .gpu/bin/cuda_kernels --shared "$shared" --precision fp32 --texts 2000
step bench-bf16 45 .gpu/bin/cuda_kernels --shared "$shared" --precision bf16 --texts 2000 --no-gemms
step bench-fp16 30 .gpu/bin/cuda_kernels --shared "$shared" --precision fp16 --texts 2000 --encoder-only
step bench-torch 60 "${check[@]}" --bench-only
# 7. bertcls train on ChnSentiCorp with the encoder on the GPU (the random BERT-base of
#    step 3: the wall time is the point, not the accuracy): the three splits encoded
#    once, 100 epochs of the head on the CPU, then on the GPU.
train() {
    time .gpu/bin/bertcls train --model /tmp/bertcls-gpu-check/model \
        --data "$shared/data/ChnSentiCorp" --device cuda \
        --no-cache --log-every 1000 --out "/tmp/bertcls-train-$1" --head-device "$1"
}
export -f train
export shared
step train-head-cpu 45 bash -c 'train cpu'
step train-head-cuda 45 bash -c 'train cuda'
# 8. The bulk path, timed: `encode --data` of the train split in fp32 and bf16 (its
#    closing line is the per-GPU rate docs/SCALING.md sizes jobs with); then the recipe's
#    `test` and `predict` (texts and bulk) on the GPU with the run of step 7.
bulk_and_recipe() {
    local b=.gpu/bin/bertcls d="$shared/data/ChnSentiCorp" run=/tmp/bertcls-train-cuda p
    for p in fp32 bf16; do
        rm -rf "/tmp/bertcls-bulk-$p.parquet"*
        time "$b" encode --model /tmp/bertcls-gpu-check/model --device cuda --precision "$p" \
            --data "$d" --split train --max-length 350 --out "/tmp/bertcls-bulk-$p.parquet" || return 1
    done
    "$b" test --run "$run" --data "$d" --device cuda || return 1
    "$b" predict --run "$run" --device cuda "这家酒店很好，服务周到。" "房间又小又脏，再也不来了。" || return 1
    rm -rf /tmp/bertcls-predict.jsonl*
    time "$b" predict --run "$run" --device cuda --data "$d" --split test \
        --out /tmp/bertcls-predict.jsonl || return 1
}
export -f bulk_and_recipe
step bulk-and-recipe 60 bash -c bulk_and_recipe
echo "=== all: $([ $status -eq 0 ] && echo PASS || echo FAIL) in ${SECONDS}s"
cat "$out/summary.txt"
finish "$status"
EOF
chmod +x "$dest/run.sh"
bash -n "$dest/run.sh" || {
    echo "error: $dest/run.sh is not valid bash" >&2
    exit 1
}

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
