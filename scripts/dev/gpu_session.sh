#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md's figures of 2026-12-06, in stages that each fit one
# device call (600 s). Every item logs to $OUT/<item>.log (JSON beside it where the script
# writes one) and goes on after a failure, so that one broken item costs only itself.
#   source scripts/dev/device_setup.sh && bash scripts/dev/gpu_session.sh STAGE
# Stages (SmolLM2 is whole on the machine from the third call carrying one .smol part on):
#   seed      issue 26: the tree before the engine refactor (.ab-old, see docs/benchmarks.md's
#             "Running the benchmarks on a GPU machine") against this one on the seed workload at
#             the old defaults, alternated twice; issue 28: this tree at its new defaults, in
#             bf16 and FP8; batch-1 decode in FP8 and AWQ int4
#   decode    issue 26: batch-1 decode against the roofline and n-gram speculation at batch 1,
#             old tree against new; issue 28:
#             1,024 sequences x 16,384 tokens a step; the GPU tests of the kernels of issues 27
#             and 28 (quantized GEMMs, FP8 KV attention, the token bitmask) and quantized models
#   qwen      issue 28: Qwen3-8B shape 1,024 / 2,048 in FP8 with an FP8 KV cache; KV capacity at
#             4k context, bf16 against FP8
#   tests     every test marked gpu
#   structured  issue 27: constrained rows against none, SmolLM2's shape and tokenizer with
#             random weights; issue 28: the seed workload at the new defaults, bf16 and FP8
#   model     issue 26: n-gram speculation at batch 1, old tree against new; issue 27:
#             constrained rows against none (both need SmolLM2)
#   grammar   issue 27 again (alternated rounds) after constrained steps kept their overlap;
#             batch-1 decode in FP8 and AWQ int4 against the roofline
#   capacity  issue 28: Qwen3-8B FP8 at 1k / 2k, KV capacity at 4k, the GEMMs against cuBLAS
#   defaults  issue 28: the seed workload, new defaults in bf16 and FP8 and the old ones; the
#             GPU tests of the quantized and structured paths
#   probe     issue 27: old tree against new, none and all rows constrained at batch 256,
#             alternated; then where the engine thread's time goes (cProfile)
#   capacity_rest  issue 28: the capacity stage less its Qwen3-8B run
#   verify    issue 28: the kernels' GPU tests, int4 batch-1 decode, KV capacity at 4k
#   kernels   issue 28: the W4A16 sweep at decode batches, int4 batch-1 decode, the kernels'
#             GPU tests
#   qwen_defaults  issue 28: Qwen3-8B FP8 at 1k / 2k, then the defaults stage's three runs
#   fp8_verify  issue 28: the quantized models' and the builder's GPU tests, Qwen3-8B FP8 at
#             1k / 2k, KV capacity at 4k (bf16 against FP8, capacity only)
#   defaults_structured  issue 28: the defaults stage's three runs; issue 27: the full table
#             (none, 10%, all; batch 1, 64, 256) on SmolLM2's shape and the 8B layers with its
#             vocabulary; then the quantized models' GPU tests with the time left
#   fp8_attention  issue 28: decode attention over an FP8 cache, fp16 products against the
#             tree before (bf16 products), alternated; its tiles; the FP8 cache's GPU tests
#   fp8_split_tiles  issue 28: split decode tiles over an FP8 cache at batch 1, 4, 16
#   structured_warm  issue 27: the full table after an untimed round of every share, two timed
#             rounds (the first full run after start-up pays 10-20% on the GPU)
#   qwen_default  issue 28: Qwen3-8B FP8 at 1k / 2k at the default 512 sequences
#   qwen_seqs  issue 28: Qwen3-8B FP8 at 1k / 2k with 269 sequences (no preemption)
#   grammar_handoff  issue 27: the tree before the mask fill was handed the GIL (.ab-old) against
#             this one, none and all rows constrained at batch 256, alternated; the GPU tests of
#             the structured path (structured_warm, the full table, in the next call)
#   grammar_handoff_8b  the same A/B on the 8B shape alone
#   structured_timeline  issue 27: where the host and device time of batch-256 steps goes
#             (scripts/dev/step_timeline.py), none and all rows constrained, the 8B shape and
#             SmolLM2's; the GPU tests of the structured path
#   structured_census  issue 27: every step of the 8B shape's batch-256 runs by kind, and a
#             trace across the first wave's end; then the structured_warm stage (the table)
#   detok_census  the detokenizer through the backend's DecodeStream: the tree before (.ab-old)
#             against this one, SmolLM2's shape at batch 256 (host-bound), none and all rows
#             constrained, alternated; then the structured_census item on this tree
#   heap_ab   issue 27: the 8B shape at batch 256, none and all rows constrained, with the
#             start-up heap left to the garbage collector (--no-freeze-heap) and frozen as the
#             service freezes it, alternated, each run's collector seconds beside its rate
#   mixed_attention  decodes beside a prefill, one attention launch against two; the attention
#             GPU tests; the W4A16 sweep at batch 1
#   mixed_ab   issue 27's batch-256 e2e on the 8B shape, .ab-old against this tree, twice
#   qwen_profile  issue 28: the builder's FP8-cache graph test; where a Qwen3-8B FP8 decode
#             step goes at batch 128 and 2k context
#   attention_tests  the attention kernels' tests on CUDA, whole (the decode launch apart and its
#             two-program floor); then the qwen_profile stage
#   bundled_tests  the GPU tests that need the bundled model's weights (every .smol part carried
#             by now): structured outputs on CUDA, the builder's, the quantized models'
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/gpu-session}"
mkdir -p "$out"
py="${DEVICE_PYTHON:-python3}"
seed=(--model llama3-8b --load-format dummy --input-len 128 --output-len 256 --num-prompts 1000)
old_defaults=(--max-num-seqs 128 --max-num-batched-tokens 2048)

item() {  # item NAME TIMEOUT_S COMMAND...: run it, keep its log, print its last lines
  local name="$1" limit="$2"
  shift 2
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  grep -v '%|' "$out/$name.log" | tail -"${TAIL_LINES:-8}"
  echo "=== $name: rc=$rc, $((SECONDS - start)) s"
}

bench() { "$py" -m llm_worker bench "$@"; }

ab_structured() {  # ab_structured TIMEOUT_S RUN_TIMEOUT_S [MODELS]: .ab-old against this tree,
  # issue 27's e2e at batch 256 with no row and every row constrained, on the 8B shape and
  # SmolLM2 unless MODELS says, alternated twice (.ab-old gets this tree's bench script)
  cp scripts/bench_structured.py .ab-old/scripts/bench_structured.py
  local e2e=(scripts/bench_structured.py e2e --device cuda --load-format dummy --output-len 128
    --rounds 1 --batch-sizes 256 --fractions 0,1 --models "${3:-llama3-8b-49k,smollm2}")
  TAIL_LINES=12 item ab_structured "$1" "$py" scripts/dev/ab.py --a .ab-old --b . --rounds 2 \
    --timeout-s "$2" --log-dir "$out/ab_structured" \
    --figure 'tok/s=^(?P<label>\S+ +\d+ +\d+%) +([\d.]+)' -- "${e2e[@]}"
}

census() {  # issue 27: every step of the 8B shape's batch-256 runs by kind, and a trace across
  # the first wave's end (scripts/dev/step_timeline.py)
  TAIL_LINES=90 item structured_census 200 "$py" scripts/bench_structured.py e2e \
    --device cuda --load-format dummy --output-len 128 --rounds 1 --batch-sizes 256 \
    --fractions 0,1 --models llama3-8b-49k --timeline 30 --timeline-from 115 \
    --json "$out/structured_census.json"
}

qwen3_fp8() {  # qwen3_fp8 TIMEOUT_S: issue 28's Qwen3-8B target, 1,000 x 1,024 in / 2,048 out
  item qwen3_fp8_1k_2k "$1" "$py" -m llm_worker bench throughput --model qwen3-8b \
    --load-format dummy --quantization fp8 --kv-cache-dtype fp8 --input-len 1024 \
    --output-len 2048 --num-prompts 1000 --output-json "$out/qwen3_fp8.json"
}

seed_defaults() {  # the seed workload at the new defaults in bf16 and FP8, and the old ones
  item seed_bf16_defaults 65 "$py" -m llm_worker bench throughput "${seed[@]}" \
    --output-json "$out/seed_bf16.json"
  item seed_fp8_defaults 65 "$py" -m llm_worker bench throughput "${seed[@]}" \
    --quantization fp8 --output-json "$out/seed_fp8.json"
  item seed_bf16_old_defaults 65 "$py" -m llm_worker bench throughput "${seed[@]}" \
    "${old_defaults[@]}" --output-json "$out/seed_bf16_old.json"
}

case "${1:-}" in
  seed)
    TAIL_LINES=6 item ab_seed 400 "$py" scripts/dev/ab.py --a .ab-old --b . --rounds 2 \
      --timeout-s 150 --log-dir "$out/ab_seed" -- bench throughput "${seed[@]}" "${old_defaults[@]}"
    item seed_bf16_defaults 100 "$py" -m llm_worker bench throughput "${seed[@]}" --output-json "$out/seed_bf16.json"
    item seed_fp8_defaults 100 "$py" -m llm_worker bench throughput "${seed[@]}" --quantization fp8 \
      --output-json "$out/seed_fp8.json"
    item roofline_fp8 60 "$py" scripts/bench_decode_roofline.py --model llama3-8b \
      --quantization fp8 --modes graphs_async --output-json "$out/roofline_fp8.json"
    item roofline_awq 60 "$py" scripts/bench_decode_roofline.py --model llama3-8b \
      --quantization awq --modes graphs_async --output-json "$out/roofline_awq.json"
    ;;
  decode)
    TAIL_LINES=6 item ab_roofline 200 "$py" scripts/dev/ab.py --a .ab-old --b . --rounds 2 \
      --timeout-s 80 --log-dir "$out/ab_roofline" -- scripts/bench_decode_roofline.py \
      --model llama3-8b --modes graphs_async
    # n-gram at batch 1 on random weights: greedy, the same tokens and drafts in both trees
    TAIL_LINES=6 item ab_ngram_batch1 200 "$py" scripts/dev/ab.py --a .ab-old --b . --rounds 2 \
      --timeout-s 80 --log-dir "$out/ab_ngram" -- bench throughput --model llama3-8b \
      --load-format dummy --input-len 128 --output-len 256 --num-prompts 4 --max-num-seqs 1 \
      --speculative-method ngram --no-speculative-adaptive
    item seqs_1024_tokens_16384 100 "$py" -m llm_worker bench throughput "${seed[@]}" --max-num-seqs 1024 \
      --max-num-batched-tokens 16384
    TAIL_LINES=25 item gpu_kernel_tests 280 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 200 tests/kernels/test_quant_kernels_gpu.py tests/kernels/test_fp8_kv_gpu.py \
      tests/structured/test_token_bitmask.py tests/quant/test_quant_model_gpu.py \
      tests/engine/test_builder_gpu.py
    ;;
  qwen)
    item qwen3_fp8_1k_2k 380 "$py" -m llm_worker bench throughput --model qwen3-8b --load-format dummy \
      --quantization fp8 --kv-cache-dtype fp8 --input-len 1024 --output-len 2048 \
      --num-prompts 1000 --output-json "$out/qwen3_fp8.json"
    item kv_capacity_4k 200 "$py" scripts/bench_kv_capacity.py --model llama3-8b --context 4096 \
      --output-json "$out/kv_capacity.json"
    ;;
  tests)
    TAIL_LINES=25 item gpu_tests 500 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 240 tests
    ;;
  model)
    TAIL_LINES=10 item ab_spec 300 "$py" scripts/dev/ab.py --a .ab-old --b . --rounds 2 \
      --timeout-s 140 --log-dir "$out/ab_spec" -- scripts/bench_spec.py --parts a \
      --max-output-len 256
    TAIL_LINES=40 item structured_e2e 280 "$py" scripts/bench_structured.py e2e \
      --device cuda --json "$out/structured.json"
    ;;
  structured)
    # SmolLM2's config and tokenizer alone (.smolcfg, 3.4 MiB) stand in for its weights, which
    # take three calls to carry: random weights of its shape, its real tokenizer and vocabulary
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    TAIL_LINES=25 item structured_e2e 230 "$py" scripts/bench_structured.py e2e --device cuda \
      --load-format dummy --output-len 128 --json "$out/structured.json"
    item seed_bf16_defaults 60 "$py" -m llm_worker bench throughput "${seed[@]}" \
      --output-json "$out/seed_bf16.json"
    item seed_fp8_defaults 60 "$py" -m llm_worker bench throughput "${seed[@]}" \
      --quantization fp8 --output-json "$out/seed_fp8.json"
    ;;
  grammar)
    # issue 27 after constrained steps kept their forward's overlap: alternated rounds
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    TAIL_LINES=10 item structured_e2e 320 "$py" scripts/bench_structured.py e2e --device cuda \
      --load-format dummy --output-len 128 --rounds 2 --json "$out/structured.json"
    TAIL_LINES=40 item bench_quant 80 "$py" scripts/bench_quant.py --models llama3-8b --m 1,64,512,8192 --output-json "$out/bench_quant.json"
    TAIL_LINES=12 item roofline_fp8 80 "$py" scripts/bench_decode_roofline.py --model llama3-8b \
      --quantization fp8 --modes graphs_async --output-json "$out/roofline_fp8.json"
    TAIL_LINES=12 item roofline_awq 80 "$py" scripts/bench_decode_roofline.py --model llama3-8b \
      --quantization awq --modes graphs_async --output-json "$out/roofline_awq.json"
    ;;
  capacity)
    # issue 28: the Qwen3-8B target, KV capacity at 4k, the GEMMs against cuBLAS
    qwen3_fp8 360
    bash "$0" capacity_rest
    ;;
  capacity_rest)
    TAIL_LINES=12 item kv_capacity_4k 120 "$py" scripts/bench_kv_capacity.py --model llama3-8b \
      --context 4096 --output-json "$out/kv_capacity.json"
    TAIL_LINES=40 item bench_quant 100 "$py" scripts/bench_quant.py --m 1,64,512,8192 --output-json "$out/bench_quant.json"
    # where a decode step's time goes at batch 512: the GEMMs' share bounds what FP8 can gain
    profile=(scripts/bench_step_profile.py --batch-size 512 --kv-cache-memory-gb 16)
    TAIL_LINES=8 item step_profile_bf16 60 "$py" "${profile[@]}" --output-json "$out/profile_bf16.json"
    TAIL_LINES=8 item step_profile_fp8 60 "$py" "${profile[@]}" --quantization fp8 \
      --output-json "$out/profile_fp8.json"
    ;;
  defaults)
    # issue 28: the seed workload at the new defaults (bf16, FP8) and the old ones, one call;
    # then the GPU tests of the quantized and structured paths
    seed_defaults
    TAIL_LINES=25 item gpu_kernel_tests 330 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 200 tests/kernels/test_quant_kernels_gpu.py tests/kernels/test_fp8_kv_gpu.py \
      tests/structured/test_token_bitmask.py tests/quant/test_quant_model_gpu.py \
      tests/engine/test_builder_gpu.py
    ;;
  qwen_defaults)
    qwen3_fp8 300
    seed_defaults
    ;;
  kernels)
    # issue 28: the W4A16 kernels' tiles and split-K at decode batches (which choose_config
    # should pick), batch-1 int4 decode against the roofline, the GPU tests of the kernels
    TAIL_LINES=60 item w4a16_sweep 300 "$py" scripts/bench_quant.py --models llama3-8b \
      --m 1,2,4,8,16 --sweep-w4a16 --output-json "$out/w4a16_sweep.json"
    TAIL_LINES=12 item roofline_awq 80 "$py" scripts/bench_decode_roofline.py --model llama3-8b \
      --quantization awq --modes graphs_async --output-json "$out/roofline_awq.json"
    TAIL_LINES=25 item gpu_kernel_tests 200 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 150 tests/kernels/test_quant_kernels_gpu.py tests/kernels/test_fp8_kv_gpu.py \
      tests/structured/test_token_bitmask.py tests/quant/test_quant_model_gpu.py \
      tests/engine/test_builder_gpu.py
    ;;
  mixed_attention)
    # decodes beside a prefill: one launch of prefill tiles against the decode launch apart
    # (DECODE_TILES_APART), with the attention GPU tests; the W4A16 kernels' sweep at batch 1
    # (issue 28)
    TAIL_LINES=30 item attention_gpu_tests 170 "$py" -m pytest -q -p no:cacheprovider \
      --timeout 140 tests/kernels/test_paged_attention.py tests/kernels/test_kernels_gpu.py \
      tests/kernels/test_fp8_kv_gpu.py
    TAIL_LINES=20 item mixed_attention 120 "$py" scripts/bench_kernels.py --mixed \
      --mixed-decodes 16,32,128,256 --mixed-contexts 384,2048 --json "$out/mixed_attention.json"
    TAIL_LINES=40 item w4a16_sweep 100 "$py" scripts/bench_quant.py --models llama3-8b \
      --m 1 --sweep-w4a16 --output-json "$out/w4a16_sweep.json"
    ;;
  mixed_ab)
    # issue 27's e2e at batch 256 on the 8B shape, .ab-old against this tree, alternated twice
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    ab_structured 480 115 llama3-8b-49k
    ;;
  verify)
    # issue 28: the GPU tests of the kernels (the W4A16 GEMV's first run on a GPU), batch-1
    # int4 decode against the roofline with it, KV capacity at 4k in FP8 against bf16
    TAIL_LINES=25 item gpu_kernel_tests 200 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 150 tests/kernels/test_quant_kernels_gpu.py tests/kernels/test_fp8_kv_gpu.py \
      tests/structured/test_token_bitmask.py tests/quant/test_quant_model_gpu.py \
      tests/engine/test_builder_gpu.py
    TAIL_LINES=12 item roofline_awq 80 "$py" scripts/bench_decode_roofline.py --model llama3-8b \
      --quantization awq --modes graphs_async --output-json "$out/roofline_awq.json"
    TAIL_LINES=12 item kv_capacity_4k 120 "$py" scripts/bench_kv_capacity.py --model llama3-8b \
      --context 4096 --output-json "$out/kv_capacity.json"
    ;;
  probe)
    # issue 27: xgrammar's fill time by thread count; the tree before the grammar advance
    # moved ahead of the drain's other work (.ab-old, given this tree's bench script) against
    # this one, constrained rows against none at batch 256, alternated (structured_profile:
    # where this tree's engine thread spends its time on the 8B shape, by cProfile)
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    TAIL_LINES=16 item mask_threads 60 "$py" scripts/bench_structured.py mask --device cuda \
      --batch-sizes 64,256 --fractions 1 --fill-threads 1,2,4,8
    ab_structured 380 180
    ;;
  grammar_handoff)
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    ab_structured 420 200
    TAIL_LINES=12 item gpu_structured_tests 90 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 80 tests/structured/test_engine_structured_gpu.py \
      tests/structured/test_token_bitmask.py
    ;;
  grammar_handoff_8b)
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    ab_structured 400 150 llama3-8b-49k
    ;;
  structured_profile)
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    TAIL_LINES=120 item structured_profile 140 "$py" scripts/bench_structured.py e2e \
      --device cuda --load-format dummy --output-len 128 --rounds 1 --batch-sizes 256 \
      --fractions 0,1 --models llama3-8b-49k --profile 25
    ;;
  structured_timeline)
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    TAIL_LINES=120 item structured_timeline 330 "$py" scripts/bench_structured.py e2e \
      --device cuda --load-format dummy --output-len 128 --rounds 1 --batch-sizes 256 \
      --fractions 0,1 --models llama3-8b-49k,smollm2 --timeline 40 --timeline-from 40 \
      --json "$out/structured_timeline.json"
    TAIL_LINES=12 item gpu_structured_tests 100 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 90 tests/structured/test_engine_structured_gpu.py \
      tests/structured/test_token_bitmask.py
    ;;
  structured_census)
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    census
    "$0" structured_warm
    ;;
  heap_ab)
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    e2e=(scripts/bench_structured.py e2e --device cuda --load-format dummy --output-len 128
      --rounds 1 --batch-sizes 256 --fractions 0,1 --models llama3-8b-49k)
    for round in 1 2; do
      TAIL_LINES=3 item "heap_unfrozen_$round" 110 "$py" "${e2e[@]}" --no-freeze-heap
      TAIL_LINES=3 item "heap_frozen_$round" 110 "$py" "${e2e[@]}"
    done
    ;;
  detok_census)
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    ab_structured 280 130 smollm2
    census
    ;;
  fp8_verify)
    TAIL_LINES=40 item gpu_model_tests 110 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 100 --tb=short tests/quant/test_quant_model_gpu.py tests/engine/test_builder_gpu.py
    qwen3_fp8 330
    TAIL_LINES=12 item kv_capacity_4k 110 "$py" scripts/bench_kv_capacity.py --model llama3-8b \
      --context 4096 --skip-throughput --output-json "$out/kv_capacity.json"
    ;;
  defaults_structured)
    seed_defaults
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    TAIL_LINES=30 item structured_table 300 "$py" scripts/bench_structured.py e2e --device cuda \
      --load-format dummy --output-len 128 --rounds 1 --warmup-rounds 0 \
      --models smollm2,llama3-8b-49k --json "$out/structured_table.json"
    TAIL_LINES=30 item gpu_quant_model_tests 75 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 70 --tb=short tests/quant/test_quant_model_gpu.py
    ;;
  qwen_profile)
    # where a Qwen3-8B FP8 decode step goes at 2k context (the 1k / 2k workload's middle)
    TAIL_LINES=12 item gpu_builder_graphs_test 60 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 50 --tb=short tests/engine/test_builder_gpu.py -k graphs_over_an_fp8_cache
    TAIL_LINES=30 item step_profile_qwen3_fp8 90 "$py" scripts/bench_step_profile.py \
      --model qwen3-8b --quantization fp8 --kv-cache-dtype fp8 --batch-size 128 --input-len 2048 \
      --num-steps 10 --kv-cache-memory-gb 45 --output-json "$out/profile_qwen3_fp8.json"
    ;;
  attention_tests)
    TAIL_LINES=15 item attention_tests 300 "$py" -m pytest -q -p no:cacheprovider --timeout 280 \
      tests/kernels/test_paged_attention.py
    "$0" qwen_profile
    ;;
  bundled_tests)
    TAIL_LINES=25 item bundled_gpu_tests 420 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 200 --tb=short tests/structured/test_engine_structured_gpu.py \
      tests/structured/test_token_bitmask.py tests/engine/test_builder_gpu.py \
      tests/quant/test_quant_model_gpu.py
    ;;
  qwen_default)
    # issue 28: the Qwen3-8B FP8 run at the default 512 sequences, alone in a call
    qwen3_fp8 380
    ;;
  qwen_seqs)
    # issue 28: the Qwen3-8B FP8 run at the sequences its cache holds at full length (269 on
    # an H100, scripts/sim_schedule.py: no preemption), against the default 512 in the
    # qwen3_fp8 item of another call
    item qwen3_fp8_1k_2k_269 380 "$py" -m llm_worker bench throughput --model qwen3-8b \
      --load-format dummy --quantization fp8 --kv-cache-dtype fp8 --input-len 1024 \
      --output-len 2048 --num-prompts 1000 --max-num-seqs 269 --output-json "$out/qwen3_fp8_269.json"
    ;;
  fp8_attention)
    # issue 28: decode attention over an FP8 cache with fp16 products (this tree) against the
    # tree before (.ab-old, products in bf16, given this tree's bench script), alternated; the
    # tiles for it; the FP8 cache's GPU tests
    cp scripts/bench_kernels.py .ab-old/scripts/bench_kernels.py
    decode=(scripts/bench_kernels.py --decode-only --kv-cache-dtype fp8 --batches 32,128,256
      --contexts 1024,2048,4096 --max-cache-tokens 1048576)
    TAIL_LINES=20 item ab_fp8_decode 280 "$py" scripts/dev/ab.py --a .ab-old --b . --rounds 2 \
      --timeout-s 120 --log-dir "$out/ab_fp8_decode" \
      --figure 'GB/s=^ +(?P<label>\d+ +\d+) +[\d.]+ +\d+ +[\d.]+ +\d+ +[\d.]+ +(\d+)' -- \
      "${decode[@]}"
    TAIL_LINES=60 item fp8_decode_tiles 120 "$py" scripts/bench_kernels.py --decode-only \
      --kv-cache-dtype fp8 --batches 128,256 --contexts 2048 --max-cache-tokens 1048576 \
      --sweep-only --decode-candidates 64:2,64:3,128:2,128:3,32:3
    TAIL_LINES=25 item fp8_kv_gpu_tests 120 "$py" -m pytest -q -m gpu -p no:cacheprovider \
      --timeout 100 --tb=short tests/kernels/test_fp8_kv_gpu.py tests/engine/test_builder_gpu.py
    ;;
  fp8_split_tiles)
    # issue 28: split decode over an FP8 cache (batch 16 and under) still streams the bf16
    # cache's 32-key tiles; tiles of the same bytes (64 keys) and deeper, against them
    TAIL_LINES=80 item fp8_split_tiles 240 "$py" scripts/bench_kernels.py --decode-only \
      --kv-cache-dtype fp8 --batches 1,4,16 --contexts 1024,4096,16384 --sweep \
      --decode-candidates 32:2,32:3,64:2,64:3,128:2 --json "$out/fp8_split_tiles.json"
    ;;
  structured_warm)
    # issue 27's table again, each share timed twice after an untimed round of all of them
    export LLM_WORKER_CACHE_DIR="$PWD/.smolcfg"
    TAIL_LINES=30 item structured_table 480 "$py" scripts/bench_structured.py e2e --device cuda \
      --load-format dummy --output-len 128 --rounds 2 --warmup-rounds 1 \
      --models smollm2,llama3-8b-49k --json "$out/structured_table.json"
    ;;
  *)
    sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
esac
