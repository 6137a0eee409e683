#!/usr/bin/env bash
# The GPU measurements of one session, in priority order, each log into $OUT as it runs.
#   bash bench/gpu_session.sh single   # one GPU: compiled and eager ingest, model probe, GPU test
#   bash bench/gpu_session.sh multi    # the parent's ceiling, then all GPUs vs one, compiled
#   bash bench/gpu_session.sh profile  # one GPU: where the pipeline's device time goes
#   bash bench/gpu_session.sh families # forward pass of each family; compile modes; CUDA graphs
# Expects the lock's wheels in .whl/ and the PDFs to ingest in .pdfs/ (see BENCHMARKS.md).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpus.txt"
run() { local name=$1; shift; echo "== $name: $*"; python3 "$@" 2>&1 | tee "$OUT/$name.log"; }
bench="-m bench.ingest_bench .pdfs --full-size --device cuda --batch-size 32"
case "${1:-single}" in
single)
    run ingest_compiled $bench --compile --repeat 2 --baseline --trace --variants 4:0.5
    [ -n "${FAMILIES:-}" ] && run probe_families -m bench.model_probe --batches 32 --families $FAMILIES
    [ -n "${GPU_TEST:-}" ] && run gpu_test -c "from tests.test_parallel import test_compiled_forward_is_as_faithful_as_eager_on_the_full_size_model as t; t(); print('compiled is as faithful as eager: ok')"
    ;;
store)  # after a change to the store stage: compiled, then with one BLAS thread for numpy
    run ingest_compiled $bench --compile --repeat 2
    OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_NUM_THREADS=1 \
        run ingest_compiled_blas1 $bench --compile --repeat 2
    ;;
multi)  # an encoder process per GPU (the default on GPUs), on all GPUs and on one, a long run
        # (4,452 pages: the start and end weigh little); the parent's stages' busy time shows
        # which one limits the GPUs. First the parent's own ceiling: the same run with the
        # forward pass replaced by random vectors.
    run ingest_null $bench --repeat 12 --gpus "$(nvidia-smi -L | wc -l)" --processes-only \
        --null-model
    run ingest_2gpu $bench --compile --repeat 12 --gpus "$(nvidia-smi -L | wc -l)" \
        --processes-only --trace
    run ingest_1gpu $bench --compile --repeat 12 --gpus 1 --processes-only
    ;;
profile)  # where a running pipeline's device time goes: per-batch device spans and gaps,
          # allocator and recompile counters, then torch's profiler over every thread
    [ -n "${GPU_TEST:-}" ] && run gpu_test -c "from tests.test_encoder import test_a_gpu_batch_is_preprocessed_into_pinned_memory as t; from tests.tiny_model import write_tiny_model; import tempfile, pathlib; t(write_tiny_model(pathlib.Path(tempfile.mkdtemp()))); print('pinned: ok')"
    run ingest_profile $bench --compile --repeat 2 --trace --torch-trace "$OUT/trace.json.gz" \
        ${PROFILE_ARGS:-}
    ;;
families)
    run probe_families -m bench.model_probe --families colqwen2 colqwen2_5 colqwen3_5
    run probe_modes -m bench.model_probe --families colqwen2 --batches 32 \
        --modes default reduce-overhead
    run ingest_graphs $bench --compile --compile-mode reduce-overhead --repeat 2
    ;;
esac
