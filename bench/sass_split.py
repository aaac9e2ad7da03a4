"""The SASS of the scan kernels before and after the package split (86cae91), for 29 kernel configurations,
compiled for sm_90 with the installed Triton (no GPU; kernels/NOTES.md, "Same machine code").

    mkdir -p .before_split/kernels
    for f in __init__.py naive.py chunked.py triton_scan.py offline.py; do git show 86cae91:kernels/$f > .before_split/kernels/$f; done
    PYTHONPATH=/tmp/shim python bench/sass_split.py .before_split/kernels > bench/results/sass_split_triton36.jsonl

(/tmp/shim/dnamamba_kernels a link to kernels/, as in bench/README.md, or the package installed.)

Each configuration is compiled three times: the old kernels as the old offline tool compiles them (absent inputs as
unused pointers); the new kernels with that same parameter list (`identical`: the same md5 of the instruction
stream); and the new kernels as launched, absent inputs as None (`identical_as_launched`, and
`identical_but_param_offsets` with the constant-bank offsets of the parameters masked). Arguments after the path
select configurations by substring.
"""
import importlib
import importlib.util
import json
import sys
import time

OLD = sys.argv[1]  # a copy of the kernels/ folder at 86cae91
ONLY = sys.argv[2:]


def load_pkg(path, name):
    spec = importlib.util.spec_from_file_location(name, path + "/__init__.py", submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


load_pkg(OLD, "old_kernels")
old_off = importlib.import_module("old_kernels.offline")
import triton  # noqa: E402

import dnamamba_kernels.offline as off  # noqa: E402

ABS = off.ABSENT
PACKED = {"init_ptr"}
PACKED_NO_H0 = {"init_ptr", "h0_ptr", "gh0_ptr"}
NOOPT = ABS | {"bias_ptr", "D_ptr", "z_ptr", "gz_ptr", "gD_ptr", "gbias_ptr"}
CONFIGS = []
for k in ("_chunk_end_kernel", "_chunk_out_kernel", "_bwd_chunk_kernel"):
    cap = (lambda lanes: 128 if lanes else 168) if k == "_bwd_chunk_kernel" else (lambda lanes: None)
    CONFIGS += [
        (f"{k} bench", k, {}, ABS, 4, cap(True)),
        (f"{k} packed", k, {}, PACKED, 4, cap(True)),
        (f"{k} plain rows", k, dict(BC_LANES=False), ABS, 4, cap(False)),
        (f"{k} plain rows packed", k, dict(BC_LANES=False), PACKED, 4, cap(False)),
        (f"{k} groups", k, dict(BC_LANES=False, ONE_GROUP=False), ABS, 4, cap(False)),
        (f"{k} no options", k, dict(SOFTPLUS=False), NOOPT, 4, cap(True)),
    ]
k = "_bwd_seq_kernel"
CONFIGS += [
    (f"{k} bench", k, {}, ABS, 1, None),
    (f"{k} packed", k, {}, PACKED, 1, None),
    (f"{k} packed no h0", k, {}, PACKED_NO_H0, 1, None),
    (f"{k} one level", k, dict(PIECE=64), ABS, 1, None),
    (f"{k} plain sums 64x2", k, dict(LANES=False, BD=64), ABS, 2, None),
    (f"{k} plain sums packed 64x2", k, dict(LANES=False, BD=64), PACKED, 2, None),
    (f"{k} groups", k, dict(LANES=False, ONE_GROUP=False), ABS, 1, None),
    (f"{k} no options", k, dict(SOFTPLUS=False), NOOPT, 1, None),
]
k = "_carry_kernel"
CONFIGS += [(f"{k} bench", k, {}, ABS, 4, None), (f"{k} init", k, {}, ABS - {"init_ptr"}, 4, None),
            (f"{k} reverse init", k, dict(REVERSE=True), ABS - {"init_ptr"}, 4, None)]


def old_constexprs(name, cx):
    """The old kernel's constexprs for the same launch: the flags that left the code at their defaults."""
    cx = dict(cx)
    if name != "_carry_kernel":
        cx["UNIT_ADD"] = True
    if name == "_bwd_seq_kernel":
        lanes = cx.pop("LANES")
        cx.update(LANE_SUMS=lanes, BC_LANES=lanes, PREFETCH_H=False, CHUNKS_FIRST=False, PREFETCH_BC=True,
                  WALK_UNROLL=1)
    return cx


def summary(kernel):
    sass = off._cuobjdump(kernel, "-sass")
    return dict(md5=off.sass_md5(sass), md5_noparams=off.sass_md5(sass, params=False),
                n=len(off.instructions(sass)), **off.resources(kernel))


print(json.dumps({"triton": triton.__version__}), flush=True)
for label, name, over, absent, warps, cap in CONFIGS:
    if ONLY and not any(o in label for o in ONLY):
        continue
    t = time.time()
    explicit = dict(off.BENCH_LAUNCHES[name][0], **over)
    cx = off.launch_constexprs(name, explicit, absent)
    old = summary(old_off.compile_sm90(name, old_constexprs(name, cx), warps, cap))
    same_sig = summary(off.compile_sm90(name, cx, warps, cap, absent=()))
    launched = summary(off.compile_sm90(name, cx, warps, cap, absent=absent))
    row = dict(config=label, old=old, new_same_signature=same_sig, new_as_launched=launched,
               identical=old["md5"] == same_sig["md5"],
               identical_as_launched=old["md5"] == launched["md5"],
               identical_but_param_offsets=old["md5_noparams"] == launched["md5_noparams"],
               seconds=round(time.time() - t))
    print(json.dumps(row), flush=True)
