"""The reliability catalogue: hostile-but-realistic things a new user tries against the qcal CLI (issue 23).

Each case is a dict: id, kind, argv (placeholders {ckpt} {tmp} {out} {calib} {eval} {vtest}), expect, and optionally
match (a substring the `qcal: error:` line must contain, case-insensitive), setup(tmp, ctx), runner (a special
run: kill, concurrent writer, disk filling up), post(tmp, ctx, run) -> problem or None, files (required in -o after
an ok run), timeout, slow, recover (after a SIGKILL: what the next writer does runs before the output is checked).

expect is decided from what a user should get, not from what the code does today:
  "error"  exit 2, a one-line `qcal: error: ...` (argparse's `qcal SUB: error:` too), no traceback
  "ok"     exit 0 (and `files` in a whole set at -o)
  "fail"   exit 1 with a reason: `qcal check` finding a failing or missing slice
  "any"    ok or a typed error, never a traceback, a hang or a half-written folder
  "killed" the run is signalled mid-way: no traceback, and -o is the previous set or a whole new one
Cases whose inputs are wrong fail before any work when qcal is right; where it is not they run a real quantize
on one calibration sample (Q below), so even a missed check ends in seconds, not minutes. Only `slow` cases
quantize on purpose.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks import reliability_cases as rc
from benchmarks.reliability_cases import QX, Q, Setup, mkdir, put, seq, table

CASES: list[dict[str, Any]] = []
name: str
m: str | None
setup: Setup | None
kw: dict[str, Any]


def case(id: str, kind: str, argv: list[str], expect: str = "error", match: str | None = None, **kw: Any) -> None:
    CASES.append(rc.make_case(id, kind, argv, expect, match, **kw))


# --- config: `qcal config --config` validates without any model; a few through quantize too -------------------
CFG: dict[str, tuple[str | bytes, str]] = {
    "syntax_error": ("opset = \n", "c.toml"), "unclosed_table": ("[keep_float\nmax_nodes = 2\n", "c.toml"),
    "duplicate_key": ("opset = 17\nopset = 18\n", "c.toml"), "unknown_key": ("opsett = 17\n", "opsett"),
    "unknown_nested_key": ("[keep_float]\nrange = 3\n", "range"), "unknown_table": ("[quantize]\nopset = 17\n",
                                                                                    "quantize"),
    "opset_99": ("opset = 99\n", "opset"), "opset_12": ("opset = 12\n", "opset"), "opset_negative": ("opset = -1\n",
                                                                                                    "opset"),
    "opset_string": ('opset = "17"\n', "opset"), "opset_float": ("opset = 17.5\n", "opset"),
    "opset_bool": ("opset = true\n", "opset"), "imgsz_100000": ("imgsz = 100000\n", "imgsz"),
    "imgsz_0": ("imgsz = 0\n", "imgsz"), "imgsz_negative": ("imgsz = -640\n", "imgsz"),
    "imgsz_not_multiple": ("imgsz = 641\n", "imgsz"), "imgsz_string": ('imgsz = "640"\n', "imgsz"),
    "imgsz_float": ("imgsz = 640.0\n", "imgsz"), "calib_size_0": ("calib_size = 0\n", "calib_size"),
    "calib_size_negative": ("calib_size = -3\n", "calib_size"),
    "calib_size_huge": ("calib_size = 1000000000000\n", "calib_size"),
    "calib_size_float": ("calib_size = 1.5\n", "calib_size"), "percentile_50": ("percentile = 50\n", "percentile"),
    "percentile_101": ("percentile = 101\n", "percentile"), "percentile_nan": ("percentile = nan\n", "percentile"),
    "percentile_string": ('percentile = "99.9"\n', "percentile"), "target_unknown": ('target = "gpu"\n', "target"),
    "observer_unknown": ('observer = "max"\n', "observer"), "blend_alphas_empty": ("blend_alphas = []\n",
                                                                                  "blend_alphas"),
    "blend_alphas_range": ("blend_alphas = [2.0]\n", "blend_alphas"),
    "blend_alphas_scalar": ("blend_alphas = 0.5\n", "blend_alphas"),
    "blend_alphas_strings": ('blend_alphas = ["a"]\n', "blend_alphas"),
    "blend_groups_0": ("blend_groups = 0\n", "blend_groups"), "per_channel_string": ('per_channel = "yes"\n',
                                                                                      "per_channel"),
    "reduce_range_int": ("reduce_range = 1\n", "reduce_range"),
    "share_concat_bad": ('share_concat_ranges = "x"\n', "share_concat_ranges"),
    "passes_unknown": ('passes = ["foo"]\n', "foo"), "passes_string": ('passes = "adaquant"\n', "passes"),
    "passes_both_names": ('passes = ["adaquant", "reconstruct"]\n', "reconstruct"),
    "passes_int": ("passes = [1]\n", "passes"), "seed_string": ('seed = "0"\n', "seed"),
    "adaquant_iters_negative": ("[adaquant]\niters = -1\n", "iters"), "adaquant_batch_0": ("[adaquant]\nbatch = 0\n",
                                                                                           "batch"),
    "adaquant_qdrop_2": ("[adaquant]\nqdrop = 2.0\n", "qdrop"),
    "adaquant_granularity_bad": ('[adaquant]\ngranularity = "net"\n', "granularity"),
    "adaquant_lr_negative": ("[adaquant]\nlr_weight = -1.0\n", "lr_weight"),
    "adaquant_round_beta_one": ("[adaquant]\nround_beta = [20.0]\n", "round_beta"),
    "keep_float_range_ratio": ("[keep_float]\nrange_ratio = 0.5\n", "range_ratio"),
    "keep_float_max_nodes_negative": ("[keep_float]\nmax_nodes = -1\n", "max_nodes"),
    "keep_float_nodes_string": ('[keep_float]\nnodes = "conv"\n', "nodes"),
    "keep_float_not_table": ("keep_float = 3\n", "keep_float"),
    "metaaug_iters_negative": ("[adaquant.augment]\niters = -1\n", "iters"),
    "metaaug_val_fraction": ("[adaquant.augment]\nval_fraction = 1.5\n", "val_fraction"),
    "scheme_unknown": ('scheme = "w3a3"\n', "scheme"), "llm_unknown_key": ("[llm]\nfoo = 1\n", "foo"),
    "reconstruct_and_adaquant": ("[reconstruct]\niters = 10\n[adaquant]\niters = 10\n", "reconstruct"),
    "tensorrt_reduce_range": ('target = "tensorrt"\nreduce_range = true\n', "reduce_range"),
    "binary_garbage": (b"\xff\xfe\x00opset\x00= 17\x81\n", "c.toml"),
}
for name, (text, m) in CFG.items():
    case(f"cfg_{name}", "config", ["config", "--config", "{tmp}/c.toml"], match=m, setup=put("c.toml", text))
case("cfg_missing_file", "config", ["config", "--config", "{tmp}/nope.toml"], match="nope.toml")
case("cfg_is_folder", "config", ["config", "--config", "{tmp}/c.toml"], match="c.toml", setup=mkdir("c.toml"))
case("cfg_json_bad", "config", ["config", "--config", "{tmp}/c.json"], match="c.json", setup=put("c.json", "{"))
case("cfg_json_list", "config", ["config", "--config", "{tmp}/c.json"], match="c.json", setup=put("c.json", "[1]"))
case("cfg_empty_file", "config", ["config", "--config", "{tmp}/c.toml"], "ok", setup=put("c.toml", ""))
case("cfg_valid", "config", ["config", "--config", "{tmp}/c.toml"], "ok",
     setup=put("c.toml", "opset = 17\nimgsz = 320\n[keep_float]\nmax_nodes = 2\n"))
for name in ("opset_99", "imgsz_100000", "syntax_error", "unknown_key", "calib_size_huge", "percentile_nan"):
    text, m = CFG[name]
    case(f"quantize_cfg_{name}", "config", [*Q, "--config", "{tmp}/c.toml"], match=m, setup=put("c.toml", text))
case("quantize_cfg_missing", "config", [*Q, "--config", "{tmp}/nope.toml"], match="nope.toml")
case("engine_cfg_opset_99", "config", ["engine", "{tmp}/m.onnx", "-o", "{tmp}/m.engine", "--config", "{tmp}/c.toml"],
     match="opset", setup=seq(put("c.toml", "opset = 99\n"), lambda t, c: rc.tiny_onnx(t / "m.onnx")))

# --- quantize flags: wrong type, out of range, empty -------------------------------------------------------------
for name, extra, m in table(
    ("calib_size_0", ["--calib-size", "0"], "calib"), ("calib_size_negative", ["--calib-size", "-5"], "calib"),
    ("calib_size_abc", ["--calib-size", "abc"], "calib-size"), ("calib_size_float", ["--calib-size", "1.5"],
                                                                "calib-size"),
    ("calib_size_huge", ["--calib-size", "1000000000000"], "calib"), ("target_unknown", ["--target", "gpu"],
                                                                      "target"),
    ("observer_unknown", ["--observer", "max"], "observer"), ("qdrop_2", ["--qdrop", "2"], "qdrop"),
    ("qdrop_negative", ["--qdrop", "-0.1"], "qdrop"), ("qdrop_nan", ["--qdrop", "nan"], "qdrop"),
    ("qdrop_abc", ["--qdrop", "abc"], "qdrop"),
    ("attribution_negative", ["--attribution", "-2"], "attribution"),
    ("attribution_huge", ["--attribution", "100000"], "attribution"), ("passes_unknown", ["--passes", "foo"], "foo"),
    ("passes_both_names", ["--passes", "adaquant,reconstruct"], "reconstruct"),
    ("passes_llm_only_on_yolo", ["--passes", "smoothquant"], "smoothquant"),
    ("passes_empty", ["--passes", ","], "passes"), ("scheme_on_yolo", ["--scheme", "w4a16"], "scheme"),
    ("offload_on_yolo", ["--offload", "layers"], "offload"), ("granularity_bad", ["--granularity", "net"],
                                                              "granularity"),
    ("keep_float_unknown_node", ["--keep-float", "/no/such/node"], "/no/such/node"),
    ("unknown_flag", ["--frobnicate"], "frobnicate"), ("task_llm_on_yolo_pt", ["--task", "llm"], "best.pt"),
):
    case(f"flag_{name}", "flags", [*Q, *extra], match=m)
case("flag_attribution_0", "flags", [*Q, "--attribution", "0"], "any")   # 0 = off, as attribution_samples = 0
case("flag_no_calib", "flags", ["quantize", "{ckpt}", "--trust-checkpoint", "-o", "{out}"], match="--calib")
case("flag_no_checkpoint", "flags", ["quantize", "--calib", "{calib}"], match="checkpoint")
case("demo_calib_size_0", "flags", ["demo", "--calib-size", "0", "-o", "{out}", "--no-progress"], match="calib")
case("demo_config_opset_99", "flags", ["demo", "--config", "{tmp}/c.toml", "-o", "{out}", "--no-progress"],
     match="opset", setup=put("c.toml", "opset = 99\n"))

# --- allocate ----------------------------------------------------------------------------------------------------
for name, extra, m in table(
    ("unknown_kind", ["--allocate", "foo=0.5"], "foo"), ("ratio_0", ["--allocate", "latency=0"], "latency"),
    ("ratio_negative", ["--allocate", "latency=-0.5"], "latency"), ("ratio_abc", ["--allocate", "latency=abc"],
                                                                   "abc"),
    ("ratio_nan", ["--allocate", "latency=nan"], "latency"), ("no_ratio", ["--allocate", "latency"], "latency"),
    ("choices_int3", ["--allocate", "latency=0.7", "--choices", "int8,int3"], "int3"),
    ("choices_empty", ["--allocate", "latency=0.7", "--choices", ""], "choices"),
    ("refine_negative", ["--allocate", "latency=0.7", "--refine", "-1"], "refine"),
    ("refine_abc", ["--allocate", "latency=0.7", "--refine", "abc"], "refine"),
):
    case(f"allocate_{name}", "allocate", [*Q, *extra], match=m)

# --- checkpoints -----------------------------------------------------------------------------------------------
QC = ["--trust-checkpoint", "--calib", "{calib}", "-o", "{out}", "--no-progress", "--calib-size", "1"]
for name, path, setup, m in table(
    ("missing", "{tmp}/nope.pt", None, "nope.pt"), ("empty_file", "{tmp}/x.pt", put("x.pt", b""), "x.pt"),
    ("text_named_pt", "{tmp}/x.pt", put("x.pt", "hello, not a checkpoint\n"), "x.pt"),
    ("random_bytes", "{tmp}/x.pt", put("x.pt", bytes(range(256)) * 64), "x.pt"),
    ("zip_garbage", "{tmp}/x.pt", put("x.pt", b"PK\x03\x04" + b"\0" * 200), "x.pt"),
    ("state_dict", "{tmp}/sd.pt", lambda t, c: rc.torch_save(t / "sd.pt", "state_dict"), "state_dict"),
    ("pickled_list", "{tmp}/l.pt", lambda t, c: rc.torch_save(t / "l.pt", "list"), "l.pt"),
    ("model_is_a_string", "{tmp}/m.pt", lambda t, c: rc.torch_save(t / "m.pt", "badmodel"), "m.pt"),
    ("truncated_real", "{tmp}/half.pt", lambda t, c: rc.cut(Path(c["ckpt"]), t / "half.pt", 0.5), "half.pt"),
    ("folder_named_pt", "{tmp}/d.pt", mkdir("d.pt"), "d.pt"), ("empty_folder", "{tmp}/d", mkdir("d"), "d"),
    ("garbage_onnx", "{tmp}/m.onnx", put("m.onnx", "not a model"), "m.onnx"),
    ("valid_onnx", "{tmp}/m.onnx", lambda t, c: rc.tiny_onnx(t / "m.onnx"), "m.onnx"),
    ("no_extension", "{tmp}/best", lambda t, c: (t / "best").symlink_to(c["ckpt"]), "best"),
    ("symlink_loop", "{tmp}/loop.pt", lambda t, c: (t / "loop.pt").symlink_to(t / "loop.pt"), "loop.pt"),
    ("dev_null", "/dev/null", None, "/dev/null"),
):
    case(f"ckpt_{name}", "ckpt", ["quantize", path, *QC], match=m, setup=setup)
case("ckpt_untrusted", "ckpt", [a for a in Q if a != "--trust-checkpoint"], match="--trust-checkpoint")
for name, path, setup in [("empty_folder", "{tmp}/hf", mkdir("hf")),
                          ("bad_config_json", "{tmp}/hf", put("hf/config.json", "{not json")),
                          ("gguf_garbage", "{tmp}/m.gguf", put("m.gguf", "GGUF but not really")),
                          ("yolo_pt", "{ckpt}", None)]:
    case(f"llm_{name}", "llm", ["quantize", path, "--task", "llm", "--calib", "{tmp}/t.txt", "-o", "{out}",
                                "--trust-checkpoint", "--no-progress"], setup=seq(put("t.txt", "some text. " * 50),
                                                                                 setup or (lambda t, c: None)))

def in_work(tmp: Path, ctx: dict[str, Any]) -> None:
    """Run from a folder of the user's own (-o "" and -o . name it)."""
    rc.write(tmp / "work" / "notes.txt", "mine")
    ctx["cwd"] = str(tmp / "work")


# --- output folders ----------------------------------------------------------------------------------------------
for name, out, setup, m, kw in table(
    ("is_file", "{tmp}/f", put("f", "x"), "is a file", {}),
    ("parent_is_file", "{tmp}/f/out", put("f", "x"), "f", {}),
    ("user_files", "{tmp}/o", put("o/notes.txt", "mine"), "notes.txt", {}),
    ("readonly_parent", "{tmp}/ro/out", lambda t, c: rc.mount_tmpfs(t / "ro", c, "1m", ro=True), "writ", {}),
    ("readonly_self", "{tmp}/ro", lambda t, c: rc.mount_tmpfs(t / "ro", c, "1m", ro=True), None, {}),
    ("immutable_parent", "{tmp}/imm/out", lambda t, c: rc.immutable(t / "imm", c), "writ", {}),
    ("immutable_self", "{tmp}/imm", lambda t, c: rc.immutable(t / "imm", c), None, {}),
    ("tmpfs_15m", "{tmp}/disk/out", lambda t, c: rc.mount_tmpfs(t / "disk", c, "15m"), "free", {}),
    ("tmpfs_50m", "{tmp}/disk/out", lambda t, c: rc.mount_tmpfs(t / "disk", c, "50m"), "free", {}),
    ("tmpfs_50m_previous_set", "{tmp}/disk/out",
     seq(lambda t, c: rc.mount_tmpfs(t / "disk", c, "50m"), lambda t, c: rc.previous_set(t / "disk/out")), "free", {}),
    ("locked", "{out}", None, "another qcal run", {"runner": rc.with_lock_held}),
    ("locked_previous_set", "{out}", lambda t, c: rc.previous_set(Path(c["out"])), "another qcal run",
     {"runner": rc.with_lock_held}),
    ("dev_null", "/dev/null", None, "/dev/null", {}),
    ("in_proc", "/proc/qcal-out", None, "/proc", {}),
    ("name_too_long", "{tmp}/" + "x" * 300, None, "xxxx", {}),
    ("empty_string", "", in_work, None, {"out_path": "{tmp}/work"}),
    ("dot_with_user_files", ".", in_work, None, {"out_path": "{tmp}/work"}),
    ("symlink_to_file", "{tmp}/link", lambda t, c: (rc.write(t / "f", "x"), (t / "link").symlink_to(t / "f")),
     "is a file", {}),
):
    case(f"out_{name}", "output", [*[a for a in Q if a not in ("-o", "{out}")], "-o", out], match=m, setup=setup,
         **{"out_path": out if out.startswith("{") else None, **kw})
case("demo_out_is_file", "output", ["demo", "-o", "{tmp}/f", "--no-progress"], match="is a file", setup=put("f", "x"))
case("demo_out_user_files", "output", ["demo", "-o", "{tmp}/o", "--no-progress"], match="notes.txt",
     setup=put("o/notes.txt", "mine"))

# --- calibration and evaluation data -----------------------------------------------------------------------------
for name, spec, setup, m in table(
    ("missing_path", "{tmp}/nope", None, "nope"), ("empty_folder", "{tmp}/imgs", mkdir("imgs"), "imgs"),
    ("text_files_only", "{tmp}/imgs", seq(put("imgs/a.txt", "x"), put("imgs/b.md", "y")), "imgs"),
    ("txt_file", "{tmp}/a.txt", put("a.txt", "x"), "a.txt"), ("bundled_unknown", "bundled:nope", None, "nope"),
    ("bundled_empty_range", "bundled:vtest[5:5]", None, "vtest"), ("bundled_bad_syntax", "bundled:vtest[abc]",
                                                                     None, "vtest[abc]"),
    ("empty_string", "", None, "calib"), ("garbage_video", "{tmp}/v.avi", put("v.avi", "not a video\n" * 100), "v.avi"),
    ("zero_byte_video", "{tmp}/v.mp4", put("v.mp4", b""), "v.mp4"),
    ("only_bad_images", "{tmp}/imgs", lambda t, c: rc.bad_images(t / "imgs"), "cut.png"),
    ("png_bomb_folder", "{tmp}/imgs", seq(mkdir("imgs"), lambda t, c: rc.png_bomb(t / "imgs/bomb.png")), "bomb.png"),
    ("png_bomb_file", "{tmp}/bomb.png", lambda t, c: rc.png_bomb(t / "bomb.png"), "bomb.png"),
    ("imagefolder_missing", "imagefolder:{tmp}/nope", None, "nope"),
    ("fifo_image", "{tmp}/frame.png", lambda t, c: os.mkfifo(t / "frame.png"), "frame.png"),
):
    case(f"calib_{name}", "calib", [*QX, "--calib", spec], match=m, setup=setup)
for name, spec, setup, m in table(
    ("missing", "{tmp}/nope", None, "--eval"), ("empty_folder", "{tmp}/ev", mkdir("ev"), "--eval"),
    ("garbage_video", "{tmp}/v.avi", put("v.avi", "not a video\n" * 100), "--eval"),
    ("png_bomb", "{tmp}/bomb.png", lambda t, c: rc.png_bomb(t / "bomb.png"), "bomb.png"),
):
    case(f"eval_{name}", "calib", [*Q, "--eval", spec], match=m, setup=setup)


# --- recipes (as --calib; a missed check costs one real calibration sample) -------------------------------------
def recipe(text: str | bytes, name: str = "r.toml") -> Setup:
    return put(name, text)


SRC = 'source = "bundled:vtest[0:8]"\n'
for name, setup, m, kw in table(
    ("self_cycle", recipe('source = "self.toml"\n', "self.toml"), "self.toml", {"spec": "{tmp}/self.toml"}),
    ("cycle_a_b_a", seq(recipe('source = "b.toml"\n', "a.toml"), recipe('source = "a.toml"\n', "b.toml")), "cycl",
     {"spec": "{tmp}/a.toml"}),
    ("cycle_a_b_c_a", seq(recipe('source = ["bundled:vtest[0:8]", "b.toml"]\n', "a.toml"),
                          recipe('source = "c.toml"\n', "b.toml"), recipe('source = "a.toml"\n', "c.toml")), "cycl",
     {"spec": "{tmp}/a.toml"}),
    ("repeat_huge", recipe(SRC + "repeat = 1000000000000\n"), None, {"expect": "any", "timeout": 120}),
    ("repeat_0", recipe(SRC + "repeat = 0\n"), "repeat", {}), ("repeat_negative", recipe(SRC + "repeat = -4\n"),
                                                                "repeat", {}),
    ("repeat_string", recipe(SRC + 'repeat = "10"\n'), "repeat", {}), ("repeat_float", recipe(SRC + "repeat = 1.5\n"),
                                                                        "repeat", {}),
    ("imgsz_0", recipe(SRC + "imgsz = 0\n"), "imgsz", {}), ("imgsz_string", recipe(SRC + 'imgsz = "640"\n'), "imgsz",
                                                            {}),
    ("imgsz_huge", recipe(SRC + "imgsz = 100000\n"), "imgsz", {}),
    ("no_source", recipe('name = "x"\n'), "source", {}), ("source_empty_list", recipe("source = []\n"), "source", {}),
    ("source_int", recipe("source = 5\n"), "source", {}),
    ("source_missing_relative", recipe('source = "nope/"\n'), "nope", {}),
    ("path_escape_etc", seq(lambda t, c: rc.images(t / "etc", 3), recipe('source = "../../../etc"\n', "a/b/c/r.toml")),
     "etc", {"spec": "{tmp}/a/b/c/r.toml"}),
    ("select_n_0", recipe(SRC + "[select]\nn = 0\n"), "select", {}),
    ("select_n_string", recipe(SRC + '[select]\nn = "2"\n'), "select", {}),
    ("select_strategy_bad", recipe(SRC + '[select]\nn = 2\nstrategy = "best"\n'), "strategy", {}),
    ("select_by_bad", recipe(SRC + '[select]\nn = 2\nstrategy = "stratified"\nby = "color"\n'), "by", {}),
    ("select_missing_n", recipe(SRC + '[select]\nstrategy = "random"\n'), "select", {}),
    ("select_not_table", recipe(SRC + "select = 5\n"), "select", {}),
    ("select_more_than_set", recipe(SRC + "[select]\nn = 1000\n"), None, {"expect": "any", "timeout": 120}),
    ("mix_preset_bad", recipe(SRC + '[mix]\npreset = "qird"\n'), "preset", {}),
    ("mix_clean_2", recipe(SRC + "[mix]\npreset = \"qrid\"\nclean = 2.0\n"), "clean", {}),
    ("mix_weight_negative", recipe(SRC + "[mix]\n[mix.weights]\nmy_blur = -1.0\n[mix.conditions.my_blur]\n"
                                   'steps = [{ kind = "gaussian_blur", sigma = 1.5 }]\n'), "my_blur", {}),
    ("mix_unknown_step", recipe(SRC + '[mix]\n[mix.conditions.c]\nsteps = [{ kind = "frobnicate" }]\n'), "frobnicate",
     {}),
    ("mix_bad_param", recipe(SRC + '[mix]\n[mix.conditions.c]\nsteps = [{ kind = "gaussian_blur", sigma = -3 }]\n'),
     "sigma", {}),
    ("mix_unknown_condition", recipe(SRC + "[mix]\n[mix.weights]\nnosuch = 1.0\n"), "nosuch", {}),
    ("mix_seed_negative", recipe(SRC + '[mix]\npreset = "qrid"\nseed = -1\n'), "seed", {}),
    ("unknown_key", recipe(SRC + 'sources = "x"\n'), "sources", {}), ("syntax_error", recipe("source = \n"), "r.toml",
                                                                      {}),
    ("not_utf8", recipe(b"source = \"\xff\xfe\"\n"), "r.toml", {}), ("empty_file", recipe(""), "source", {}),
    ("is_folder", mkdir("r.toml"), "r.toml", {}), ("bundled_name_typo", None, "vtest-qrd", {"spec": "vtest-qrd.toml"}),
):
    kw = dict(kw)
    case(f"recipe_{name}", "recipe", [*QX, "--calib", kw.pop("spec", "{tmp}/r.toml")], kw.pop("expect", "error"), m,
         setup=setup, **kw)


from benchmarks.reliability_catalogue_tools import CASES as TOOL_CASES  # noqa: E402 (check, bench, engine, lint, ...)

CASES += TOOL_CASES
