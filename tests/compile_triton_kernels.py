"""Compile saliency.triton_nn's kernels ahead of time for NVIDIA GPUs, without one: every input precision
for each compute capability given (e.g. ``80 90``). Prints one JSON line per kernel: its name, precision,
capability, cubin bytes and the launch's shared memory. Run without ``TRITON_INTERPRET`` (the interpreter
replaces the compiler)."""

from __future__ import annotations

import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from saliency import triton_nn


def _argument_type(name: str, constants: dict) -> str:
    if name in constants:
        return "constexpr"
    if name.endswith("_ptr"):
        return "*i64" if name == "index_ptr" else "*fp32"
    return "i32"


def compile_kernels(capability: int) -> list[dict]:
    compiled = []
    for kernel in (triton_nn._column_min_kernel, triton_nn._argmin_kernel):
        names = kernel.arg_names
        for precision, config in triton_nn.CONFIGS.items():
            constants = {name: config[name] for name in ("BLOCK_Q", "BLOCK_K", "BLOCK_D")}
            constants["PRECISION"] = precision
            signature = {name: _argument_type(name, constants) for name in names}
            source = ASTSource(
                fn=kernel,
                signature=signature,
                constexprs={(names.index(name),): value for name, value in constants.items()},
            )
            binary = triton.compile(
                source,
                target=GPUTarget("cuda", capability, 32),
                options={"num_warps": config["num_warps"], "num_stages": triton_nn.NUM_STAGES},
            )
            compiled.append(
                {
                    "kernel": kernel.__name__,
                    "precision": precision,
                    "capability": capability,
                    "cubin_bytes": len(binary.asm["cubin"]),
                    "shared": binary.metadata.shared,
                }
            )
    return compiled


if __name__ == "__main__":
    for capability in sys.argv[1:]:
        for row in compile_kernels(int(capability)):
            print(json.dumps(row))
