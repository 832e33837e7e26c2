"""llama.cpp itself, for benchmarks/bench_llama_cpp.py: run with the `make peers` interpreter
(`.venv-peers/bin/python`, which has the `llama-cpp-python` package), never imported by our own venv.

    .venv-peers/bin/python benchmarks/_llama_cpp_peer.py quantize IN.gguf OUT.gguf FTYPE THREADS [IMATRIX.npz]
        llama.cpp's `llama_model_quantize` (what `llama-quantize [--imatrix F] IN OUT TYPE THREADS` runs), with the
        importance of each weight's columns in IMATRIX.npz (name -> float32 values, what llama-quantize hands the
        library after reading an imatrix file); prints {"seconds": wall time of the call, "rc": its return code}.
    .venv-peers/bin/python benchmarks/_llama_cpp_peer.py eval MODEL.gguf TOKENS.npy OUT.npy THREADS
        loads MODEL with llama.cpp and evaluates every row of TOKENS (int32 [n_seq, n_tok]) from an empty
        context; writes the next-token logits of every position as float32 [n_seq, n_tok, n_vocab] to OUT; prints
        {"seconds": ..., "n_vocab": ...}.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

import numpy as np


def quantize(src: str, dst: str, ftype: int, threads: int, imatrix: str | None = None) -> dict:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    if imatrix:
        # llama_model_imatrix_data[]: {name, data, size} per weight, then a terminator with a null name
        data = np.load(imatrix)
        values = [np.ascontiguousarray(data[n], dtype=np.float32) for n in data.files]
        entries = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()
        for entry, name, v in zip(entries, data.files, values, strict=False):
            entry.name = name.encode()
            entry.data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = v.size
        entries[len(values)].name = None
        params.imatrix = ctypes.cast(entries, type(params.imatrix))
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    return {"seconds": time.perf_counter() - t0, "rc": int(rc)}


def cpu_buffers_only() -> None:
    """Load weights into plain CPU buffers (`llama_model_params.use_extra_bufts = false`): the AMX weight repacking
    that a GGML_NATIVE build turns on where the CPU has AMX (Sapphire Rapids and later) crashes in
    `ggml_backend_amx_mul_mat` on every quantized file, llama.cpp's own as ours (llama-cpp-python 0.3.36)."""
    import llama_cpp.llama_cpp as api  # the module `Llama` takes its defaults from

    defaults = api.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = False
        return p

    api.llama_model_default_params = params


def evaluate(model: str, tokens_path: str, out: str, threads: int) -> dict:
    from llama_cpp import Llama

    cpu_buffers_only()

    tokens = np.load(tokens_path)
    n_seq, n_tok = tokens.shape
    t0 = time.perf_counter()
    llm = Llama(model_path=model, n_ctx=n_tok, n_batch=n_tok, logits_all=True, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()
    logits = np.empty((n_seq, n_tok, n_vocab), dtype=np.float32)
    for i in range(n_seq):
        llm.reset()
        llm.eval([int(t) for t in tokens[i]])
        logits[i] = llm.scores[:n_tok]
    np.save(out, logits)
    return {"seconds": time.perf_counter() - t0, "n_vocab": int(n_vocab)}


def main(argv: list[str]) -> None:
    if len(argv) >= 1 and argv[0] == "quantize" and len(argv) in (5, 6):
        result = quantize(argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5] if len(argv) == 6 else None)
    elif len(argv) >= 1 and argv[0] == "eval" and len(argv) == 5:
        result = evaluate(argv[1], argv[2], argv[3], int(argv[4]))
    else:
        raise SystemExit(__doc__)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
