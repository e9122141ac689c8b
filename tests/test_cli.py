"""The ``jaxprune`` command, driven through subprocesses as a user runs it.

Exact results against torch's own pruning (l1, ln-structured, iterative
``*_orig``/``*_mask`` input, global), against ``interop.prune_module`` for the
random methods (same seed, same masks), byte-identical reruns, and every
bad-input case: one line on stderr, exit status 2, nothing left behind.
"""

import contextlib
import io
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
from _torch_models import small_cnn
from torch.nn.utils import prune

from jaxprune import interop

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300
# The masks do not depend on the backend; CPU keeps GPU-probing messages off the stderr the tests read.
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def run_cli(*args, cwd=None, stderr=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "jaxprune", *map(str, args)], check=False, stdout=subprocess.PIPE,
                          stderr=stderr, text=True, timeout=TIMEOUT, cwd=cwd, env=ENV)


def run_ok(*args, **kwargs):
    result = run_cli(*args, **kwargs)
    assert result.returncode == 0, result.stderr
    assert result.stderr in ("", None)  # no progress bar, no warnings when stderr is not a terminal
    return result.stdout


def assert_error(result, *mentions):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jaxprune: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for text in mentions:
        assert text in lines[0], (text, lines[0])
    assert result.stdout == ""


def np_of(t):
    return t.detach().numpy()


def load_pt(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """small_cnn's state_dict as .pt and as .safetensors (written by the safetensors package)."""
    folder = tmp_path_factory.mktemp("inputs")
    state = small_cnn().state_dict()
    torch.save(state, folder / "cnn.pt")
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "cnn.safetensors"))
    return folder


# --------------------------------------------------------------------------
# Normal paths
# --------------------------------------------------------------------------


def test_l1_and_ln_structured_equal_torchs_masks_and_reruns_are_byte_identical(files, tmp_path):
    rules = ["--rule", "0.weight=ln-structured:0.25:n=2:dim=0", "--rule", "4.weight=l1:0.5"]
    outs = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        stdout = run_ok("prune", files / "cnn.pt", "-o", folder / "out.safetensors", *rules, "--seed", "0",
                        "--masks", folder / "masks.pt")
        outs.append((stdout.replace(str(folder), "DIR"), (folder / "out.safetensors").read_bytes(),
                     (folder / "masks.pt").read_bytes()))
        assert sorted(os.listdir(folder)) == ["masks.pt", "out.safetensors"]  # no temporaries left
    assert outs[0] == outs[1]

    net = small_cnn()
    prune.ln_structured(net[0], "weight", amount=0.25, n=2, dim=0)
    prune.l1_unstructured(net[4], "weight", amount=0.5)
    masks = load_pt(tmp_path / "a" / "masks.pt")
    assert sorted(masks) == ["0.weight", "4.weight"]
    assert masks["0.weight"].dtype == torch.bool
    assert torch.equal(masks["0.weight"], net[0].weight_mask.bool())
    assert torch.equal(masks["4.weight"], net[4].weight_mask.bool())
    # The pruned weights: torch's effective weights; every other tensor unchanged, same names and dtypes.
    out = safetensors_torch.load_file(str(tmp_path / "a" / "out.safetensors"))
    reference = {k: v for k, v in small_cnn().state_dict().items()}
    reference["0.weight"], reference["4.weight"] = net[0].weight.detach(), net[4].weight.detach()
    assert sorted(out) == sorted(reference)
    for name, value in reference.items():
        assert out[name].dtype == value.dtype and torch.equal(out[name], value), name

    stdout = outs[0][0]
    assert "0.weight               (8, 3, 3, 3)  float32  ln-structured:0.25:n=2:dim=0  2/8 dim-0 slices" in stdout
    assert "4.weight               (10, 128)     float32  l1:0.5                        640/1,280 entries" in stdout
    assert stdout.splitlines()[-3].split()[:2] == ["total", "694/1,547"]
    assert "wrote DIR/out.safetensors (pruned weights, 9 tensors)" in stdout


def test_json_output_and_pt_outputs_are_byte_identical(files, tmp_path):
    args = ["prune", files / "cnn.safetensors", "-o", tmp_path / "out.pt", "--rule", "*.weight=l1:7",
            "--rule", "*=skip", "--seed", "3", "--masks", tmp_path / "masks.safetensors", "--json"]
    first = run_ok(*args)
    out_bytes, mask_bytes = (tmp_path / "out.pt").read_bytes(), (tmp_path / "masks.safetensors").read_bytes()
    assert run_ok(*args) == first
    assert (tmp_path / "out.pt").read_bytes() == out_bytes
    assert (tmp_path / "masks.safetensors").read_bytes() == mask_bytes

    doc = json.loads(first)
    assert doc["seed"] == 3 and doc["global"] is None and doc["masks"] == str(tmp_path / "masks.safetensors")
    assert doc["rules"] == [{"pattern": "*.weight", "spec": "l1:7"}, {"pattern": "*", "spec": "skip"}]
    rows = {row["name"]: row for row in doc["tensors"]}
    assert rows["1.weight"] == {"name": "1.weight", "shape": [8], "dtype": "float32", "method": "l1:7",
                                "unit": "entries", "units_pruned": 7, "units_total": 8, "pruned": 7, "size": 8,
                                "sparsity": 7 / 8}
    assert rows["1.num_batches_tracked"]["method"] is None and rows["1.num_batches_tracked"]["dtype"] == "int64"
    assert doc["total"] == {"pruned": 21, "size": 1547, "sparsity": 21 / 1547}

    masks = safetensors_numpy.load_file(str(tmp_path / "masks.safetensors"))
    assert sorted(masks) == ["0.weight", "1.weight", "4.weight"] and masks["4.weight"].dtype == np.bool_
    state = small_cnn().state_dict()
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, np.asarray(jp.l1_unstructured(jnp.asarray(np_of(state[name])), 7)))
    out = load_pt(tmp_path / "out.pt")
    assert list(out) == sorted(state)
    assert torch.equal(out["4.weight"], state["4.weight"] * torch.from_numpy(masks["4.weight"]))
    assert torch.equal(out["1.num_batches_tracked"], state["1.num_batches_tracked"])


def test_random_methods_equal_prune_module_and_torch_reparam_loads_into_torch(files, tmp_path):
    run_ok("prune", files / "cnn.pt", "-o", tmp_path / "pairs.pt", "--seed", "7", "--torch-reparam",
           "--rule", "0.weight=random-structured:0.5:dim=1", "--rule", "4.weight=random:0.3",
           "--rule", "1.weight=random-unstructured:2", "--rule", "0.bias=identity")
    expected = interop.prune_module(jax.random.key(7), small_cnn(), {
        "0.weight": jp.RandomStructured(0.5, dim=1), "4.weight": jp.RandomUnstructured(0.3),
        "1.weight": jp.RandomUnstructured(2), "0.bias": jp.Identity()})
    state = load_pt(tmp_path / "pairs.pt")
    reference = expected.state_dict()
    assert sorted(state) == sorted(reference)
    for name, value in reference.items():
        assert state[name].dtype == value.dtype and torch.equal(state[name], value), name
    assert int((state["0.weight_mask"] == 0).all(dim=(0, 2, 3)).sum()) == 2  # round(0.5 * 3) input channels

    # Loads into a module pruned with torch's API (identity installs the reparametrization), same forward.
    net = small_cnn(seed=1)
    for module, name in ((net[0], "weight"), (net[4], "weight"), (net[1], "weight"), (net[0], "bias")):
        prune.identity(module, name)
    net.load_state_dict(state)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net.eval()(x), expected.eval()(x))


def test_pairs_input_is_pruned_again_as_torch_prunes_a_second_time(tmp_path):
    net = small_cnn()
    prune.l1_unstructured(net[4], "weight", amount=0.3)
    prune.ln_structured(net[0], "weight", amount=0.25, n=2, dim=0)
    prune.random_unstructured(net[1], "weight", amount=3)
    with torch.no_grad():  # a NaN where the mask already prunes: torch's importance is orig * mask (NaN there)
        net[4].weight_orig[net[4].weight_mask == 0] = torch.where(
            torch.arange(int((net[4].weight_mask == 0).sum())) % 2 == 0, float("nan"), 5.0)
    torch.save(net.state_dict(), tmp_path / "pruned_once.pt")

    stdout = run_ok("prune", tmp_path / "pruned_once.pt", "-o", tmp_path / "twice.pt", "--torch-reparam",
                    "--seed", "5", "--rule", "4.weight=l1:0.5", "--rule", "0.weight=ln-structured:0.25:n=2:dim=0",
                    "--rule", "1.weight=random:2", "--masks", tmp_path / "masks.safetensors")
    run_ok("prune", tmp_path / "pruned_once.pt", "-o", tmp_path / "twice_plain.safetensors", "--seed", "5",
           "--rule", "4.weight=l1:0.5", "--rule", "0.weight=ln-structured:0.25:n=2:dim=0",
           "--rule", "1.weight=random:2")
    # torch's second round (its PruningContainer), and the bridge for the random one.
    prune.l1_unstructured(net[4], "weight", amount=0.5)
    prune.ln_structured(net[0], "weight", amount=0.25, n=2, dim=0)
    interop.prune_module(jax.random.key(5), net, {"1.weight": jp.RandomUnstructured(2)})
    reference = net.state_dict()
    state = load_pt(tmp_path / "twice.pt")
    assert sorted(state) == sorted(reference)
    for name, value in reference.items():
        assert torch.equal(state[name], value) or (torch.isnan(value).any() and torch.equal(
            torch.nan_to_num(state[name], nan=-1.0), torch.nan_to_num(value, nan=-1.0))), name
    assert int((state["4.weight_mask"] == 0).sum()) == 384 + 448  # 30% of 1280, then 50% of the 896 left
    assert "4.weight               (10, 128)     float32  l1:0.5" in stdout and "832/1,280 entries" in stdout

    plain = safetensors_torch.load_file(str(tmp_path / "twice_plain.safetensors"))
    assert "4.weight_orig" not in plain and "4.weight" in plain
    for module, name in ((net[4], "4.weight"), (net[0], "0.weight"), (net[1], "1.weight")):
        assert torch.equal(plain[name], torch.where(module.weight_mask.bool(), module.weight_orig, 0.0)), name


def test_global_amount_equals_torchs_global_unstructured(files, tmp_path):
    stdout = run_ok("prune", files / "cnn.safetensors", "-o", tmp_path / "out.safetensors", "--seed", "0",
                    "--global", "0.6", "--rule", "1.*=skip", "--rule", "*.weight=l1",
                    "--masks", tmp_path / "masks.pt")
    net = small_cnn()
    prune.global_unstructured([(net[0], "weight"), (net[4], "weight")], prune.L1Unstructured, amount=0.6)
    masks = load_pt(tmp_path / "masks.pt")
    assert sorted(masks) == ["0.weight", "4.weight"]
    assert torch.equal(masks["0.weight"], net[0].weight_mask.bool())
    assert torch.equal(masks["4.weight"], net[4].weight_mask.bool())
    assert int((~masks["0.weight"]).sum() + (~masks["4.weight"]).sum()) == round(0.6 * (216 + 1280))
    assert "global l1:0.6" in stdout

    # Random: one group over both tensors, the same masks as the bridge's global group with the same seed.
    run_ok("prune", files / "cnn.pt", "-o", tmp_path / "random.pt", "--seed", "11", "--global", "500",
           "--rule", "0.weight=random", "--rule", "4.weight=random", "--masks", tmp_path / "random_masks.pt")
    group = jp.GlobalUnstructured(500, method="random", group="g")
    expected = interop.prune_module(jax.random.key(11), small_cnn(), {"0.weight": group, "4.weight": group})
    masks = load_pt(tmp_path / "random_masks.pt")
    assert torch.equal(masks["0.weight"], expected[0].weight_mask.bool())
    assert torch.equal(masks["4.weight"], expected[4].weight_mask.bool())
    assert int((~masks["0.weight"]).sum() + (~masks["4.weight"]).sum()) == 500


def test_float16_bfloat16_float64_safetensors_in_place_without_torch(tmp_path):
    rng = np.random.default_rng(0)
    wide = 1.0 + rng.permutation(40).astype(np.float64) * 1e-12  # all equal in float32: ranking needs float64
    tensors = {"a.half": torch.from_numpy(rng.standard_normal((6, 5)).astype(np.float16)),
               "b.bf16": torch.from_numpy(rng.standard_normal((4, 8)).astype(np.float32)).to(torch.bfloat16),
               "c.wide": torch.from_numpy(wide.reshape(5, 8)),
               "d.steps": torch.arange(3, dtype=torch.int32)}
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    script = ("import sys; from jaxprune.cli import main; rc = main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    result = subprocess.run(
        [sys.executable, "-c", script, "prune", str(path), "-o", str(path), "--seed", "0", "--rule", "a.*=l1:0.5",
         "--rule", "b.*=ln-structured:0.5:n=1:dim=1", "--rule", "c.*=l1:10", "--masks", str(tmp_path / "m.safetensors")],
        check=False, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "model.safetensors"]  # IN overwritten atomically

    out = safetensors_torch.load_file(str(path))
    masks = safetensors_torch.load_file(str(tmp_path / "m.safetensors"))
    for name, value in tensors.items():
        assert out[name].dtype == value.dtype, name
    with jax.enable_x64(True):
        expected = {
            "a.half": jp.l1_unstructured(interop.to_jax(tensors["a.half"]), 0.5),
            "b.bf16": jp.ln_structured(interop.to_jax(tensors["b.bf16"]), 0.5, 1, 1),
            "c.wide": jp.l1_unstructured(jnp.asarray(wide.reshape(5, 8)), 10),
        }
    for name, mask in expected.items():
        mask = torch.from_numpy(np.array(mask))
        assert torch.equal(masks[name], mask), name
        assert torch.equal(out[name], torch.where(mask, tensors[name], torch.zeros((), dtype=tensors[name].dtype)))
    assert torch.equal(masks["c.wide"].flatten(), torch.from_numpy(wide >= 1.0 + 10 * 1e-12 - 1e-13))
    assert torch.equal(out["d.steps"], tensors["d.steps"])


def test_report_counts_zeros_and_zero_slices(tmp_path):
    w = np.arange(1, 25, dtype=np.float32).reshape(4, 6)
    w[1, :] = 0.0
    w[:, 2] = 0.0
    w[3, 4] = 0.0
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file({"w": torch.from_numpy(w), "b": torch.zeros(3, dtype=torch.bfloat16)}, str(path))
    stdout = run_ok("report", path)
    assert stdout.splitlines() == [
        "tensor  shape   dtype     zeros  size  sparsity  all-zero slices",
        "b       (3,)    bfloat16      3     3   100.00%",
        "w       (4, 6)  float32      10    24    41.67%  dim0 1/4, dim1 1/6",
        "total                        13    27    48.15%",
    ]

    net = small_cnn()
    prune.ln_structured(net[0], "weight", amount=3, n=1, dim=0)
    torch.save(net.state_dict(), tmp_path / "pairs.pt")
    doc = json.loads(run_ok("report", tmp_path / "pairs.pt", "--json"))
    rows = {row["name"]: row for row in doc["tensors"]}
    assert "0.weight_orig" not in rows and rows["0.weight"]["pair"] is True
    assert rows["0.weight"]["zeros"] == 3 * 27 and rows["0.weight"]["zero_slices"][0] == {"dim": 0, "zero": 3,
                                                                                          "total": 8}
    assert rows["4.weight"]["zero_slices"] == [{"dim": 0, "zero": 0, "total": 10}, {"dim": 1, "zero": 0, "total": 128}]
    assert rows["1.num_batches_tracked"]["zero_slices"] == [] and doc["format"] == "torch"


def test_progress_bar_only_on_a_terminal(tmp_path):
    path = tmp_path / "many.safetensors"
    safetensors_torch.save_file({f"layer{i:02d}.weight": torch.ones(3, 4) * i for i in range(25)}, str(path))
    args = ["prune", path, "-o", tmp_path / "out.safetensors", "--seed", "0", "--rule", "*=l1:0.5"]
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "jaxprune", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=slave, text=True, env=ENV)
        os.close(slave)
        stdout, _ = proc.communicate(timeout=TIMEOUT)
        seen = b""
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    text = seen.decode()
    assert "\r" in text and "pruning [" in text and "25/25" in text and "layer24.weight" in text
    assert "\n" not in text.replace("\r\n", "")  # one line, rewritten in place
    assert "total" in stdout
    run_ok(*args)  # not a terminal: nothing on stderr (run_ok checks)


# --------------------------------------------------------------------------
# Bad input: one line on stderr, status 2, no output or temporary file
# --------------------------------------------------------------------------


class Evil:
    """Unpickling this would create the marker file (pickle calls ``open(marker, "w")``)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


BAD_RULES = [
    (["--rule", "4.weight=l1:abc"], ["'l1:abc'", "'abc'"]),
    (["--rule", "4.weight=magic:0.5"], ["'magic'"]),
    (["--rule", "0.weight=random-structured:0.3:dims=0"], ["'dims'"]),
    (["--rule", "0.weight=ln-structured:0.3:n=2:n=1"], ["'n' given twice"]),
    (["--rule", "0.weight=ln-structured:0.3:dim=0"], ["needs n="]),
    (["--rule", "0.weight=ln-structured:0.3:n=two"], ["n='two'"]),
    (["--rule", "4.weight=l1"], ["'l1'", "needs an amount"]),
    (["--rule", "4.weight"], ["'4.weight'", "PATTERN=SPEC"]),
    (["--rule", "4.weight=l1:1.5"], ["amount=1.5"]),
    (["--rule", "4.weight=l1:-3"], ["amount=-3"]),
    (["--rule", "4.weight=l1:5000"], ["'4.weight'", "5000"]),
    (["--rule", "0.weight=random-structured:0.5:dim=4"], ["'0.weight'", "4"]),
    (["--rule", "0.bias=ln-structured:0.5:n=2"], ["'0.bias'", "multidimensional"]),
    (["--rule", "nothing.*=l1:0.5"], ["'nothing.*'", "matches no"]),
    (["--rule", "*.weight=l1:0.5", "--rule", "4.weight=l1:0.1"], ["'4.weight'", "never applies"]),
    (["--rule", "1.*=l1:0.5"], ["'1.num_batches_tracked'", "int64"]),
    (["--global", "0.5", "--rule", "0.weight=random-structured:dim=0"], ["random-structured", "--global"]),
    (["--global", "0.5", "--rule", "*.weight=l1:0.3"], ["l1:0.3", "--global"]),
    (["--global", "0.5", "--rule", "0.weight=l1", "--rule", "4.weight=random"], ["l1", "random"]),
    (["--global", "100000", "--rule", "4.weight=l1"], ["100000"]),
    (["--global", "1.5", "--rule", "4.weight=l1"], ["'1.5'"]),
]


def run_all(commands):
    """Run the commands in this process through ``main`` (the entry point's own function): a
    process per command is mostly interpreter and jax start-up; the tests above run the real
    executable, and `test_errors_in_process_equal_the_executables` checks the two agree."""
    return [run_in_process(*args) for args in commands]


def run_in_process(*args):
    from jaxprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_errors_in_process_equal_the_executables(files, tmp_path):
    cases = [
        ["prune", tmp_path / "missing.pt", "-o", tmp_path / "o.safetensors", "--rule", "*.weight=l1:0.5"],
        ["prune", files / "cnn.safetensors", "-o", tmp_path / "o.safetensors", "--rule", "*.weight=magic:0.5"],
        ["report", tmp_path],
    ]
    for args in cases:
        real, here = run_cli(*args), run_in_process(*args)
        assert (here.returncode, here.stdout, here.stderr) == (real.returncode, real.stdout, real.stderr)
        assert real.returncode == 2


def check_all(cases, results):
    for (mentions, args), result in zip(cases, results):
        try:
            assert_error(result, *mentions)
        except AssertionError as err:
            raise AssertionError(f"jaxprune {' '.join(map(str, args))}: {err}") from None


def test_bad_rules_fail_in_one_line(files, tmp_path):
    cases = []
    for i, (extra, mentions) in enumerate(BAD_RULES):
        out = tmp_path / f"case{i}"
        out.mkdir()
        cases.append((mentions, ["prune", files / "cnn.safetensors", "-o", out / "out.safetensors", "--seed", "0",
                                 "--masks", out / "masks.safetensors", *extra]))
    check_all(cases, run_all([args for _, args in cases]))
    for i in range(len(BAD_RULES)):
        assert os.listdir(tmp_path / f"case{i}") == [], BAD_RULES[i]


def test_bad_files_fail_in_one_line(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cases = []

    def case(mentions, *args):
        cases.append((mentions, args))

    rule = ["--rule", "*.weight=l1:0.5", "--seed", "0"]
    missing = tmp_path / "missing.pt"
    case([str(missing), "no such file"], "prune", missing, "-o", out / "o.safetensors", *rule)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    case([str(folder), "directory"], "prune", folder, "-o", out / "o.safetensors", *rule)
    case(["folder.safetensors", "directory"], "report", folder)
    unknown = tmp_path / "weights.h5"
    unknown.write_bytes(b"\x89HDF\r\n\x1a\n")
    case([str(unknown), "unknown format"], "prune", unknown, "-o", out / "o.safetensors", *rule)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    case([str(garbage), "not a valid safetensors file"], "report", garbage)
    garbage_pt = tmp_path / "garbage.pt"
    garbage_pt.write_bytes(b"hello, this is not a torch file")
    case([str(garbage_pt), "torch checkpoint"], "prune", garbage_pt, "-o", out / "o.safetensors", *rule)
    case([str(tmp_path / "nowhere"), "does not exist"],
         "prune", files / "cnn.safetensors", "-o", tmp_path / "nowhere" / "o.safetensors", *rule)
    case(["o.txt", "unknown format"], "prune", files / "cnn.safetensors", "-o", out / "o.txt", *rule)
    case(["--masks", "nowhere"], "prune", files / "cnn.safetensors", "-o", out / "o.safetensors", *rule,
         "--masks", tmp_path / "nowhere" / "m.pt")
    case(["same file"], "prune", files / "cnn.safetensors", "-o", out / "o.safetensors", *rule,
         "--masks", out / "o.safetensors")
    case(["-1", "--seed"], "prune", files / "cnn.safetensors", "-o", out / "o.safetensors",
         "--rule", "*.weight=l1:0.5", "--seed", "-1")
    case(["--seed", "'*.weight=random:0.5'"], "prune", files / "cnn.safetensors", "-o", out / "o.safetensors",
         "--rule", "*.weight=random:0.5")
    case(["--rule"], "prune", files / "cnn.safetensors", "-o", out / "o.safetensors", "--seed", "0")
    case(["--bogus"], "prune", files / "cnn.safetensors", "-o", out / "o.safetensors", *rule, "--bogus")
    case(["COMMAND"])
    # A state_dict with a non-tensor entry; one with a complex tensor that fails while OUT is being written.
    torch.save({"w": torch.ones(2, 2), "epoch": 3}, tmp_path / "wrapped.pt")
    case(["'epoch'", "not a tensor"], "prune", tmp_path / "wrapped.pt", "-o", out / "o.safetensors", *rule)
    torch.save({"a.weight": torch.ones(2, 2), "z.phase": torch.ones(2, dtype=torch.complex128)}, tmp_path / "c.pt")
    case(["'z.phase'", "complex128"], "prune", tmp_path / "c.pt", "-o", out / "o.safetensors", *rule,
         "--masks", out / "m.safetensors")
    check_all(cases, run_all([args for _, args in cases]))
    assert os.listdir(out) == []


def test_a_pickle_that_needs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "payload": Evil(str(marker))}, evil)
    assert not marker.exists()
    result = run_cli("prune", evil, "-o", tmp_path / "out.safetensors", "--rule", "w=l1:1", "--seed", "0")
    assert_error(result, str(evil), "refused", "weights_only=True")
    assert_error(run_cli("report", evil), "refused")
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["evil.pt"]


# --------------------------------------------------------------------------
# Packaging, imports, the demo
# --------------------------------------------------------------------------


def test_import_jaxprune_and_cli_pull_in_no_heavy_dependency():
    script = ("import sys, jaxprune, jaxprune.cli, jaxprune.demo; "
              "print(sorted(m for m in ('flax', 'optax', 'torch', 'sklearn', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                            timeout=TIMEOUT, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_console_script_and_module_entry_point():
    script = Path(sys.executable).parent / ("jaxprune.exe" if os.name == "nt" else "jaxprune")
    assert script.exists(), f"{script} missing: pip install -e . installs the console script"
    result = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True,
                            timeout=TIMEOUT, env=ENV)
    assert result.returncode == 0, result.stderr
    for command in ("prune", "report", "demo"):
        assert command in result.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"jaxprune {jp.__version__}"


def test_demo_prints_the_table_and_writes_the_plot_and_shows_progress(tmp_path):
    result = run_cli("demo", "--steps", "200", "--plot", "demo.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stdout = result.stdout
    assert result.stderr.splitlines() == ["[demo] training the dense baseline (200 steps)",
                                          "[demo] training with jp.pruning to 90% sparsity (200 steps)",
                                          "[demo] done; writing the table and the plot"]
    assert "compiled 1 time(s)" in stdout
    assert "| model | step | kernel sparsity | test acc after update | test acc after training |" in stdout
    assert "| pruned, fine-tuned | 200 | 90.00% |" in stdout
    assert f"plot written to {tmp_path / 'demo.png'}" in stdout
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_error(run_cli("demo", "--steps", "5"), "--steps", "5")


def test_demo_help_prints_percent_once():
    help_text = run_ok("demo", "--help")
    assert "90%" in help_text and "%%" not in help_text


def test_demo_without_its_dependencies_says_what_to_install():
    script = "import sys; sys.modules['sklearn'] = None; from jaxprune.cli import main; sys.exit(main(['demo']))"
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                            timeout=TIMEOUT, env=ENV)
    assert_error(result, "pip install 'jaxprune[examples]'")


# --------------------------------------------------------------------------
# Defects found trying the command as a new user would (each test failed before its fix)
# --------------------------------------------------------------------------


def test_an_output_that_is_the_input_or_the_other_output_is_refused(files, tmp_path):
    """--masks naming the input (also through '..', a symlink or a hard link) destroyed the weights."""
    model = tmp_path / "model.safetensors"
    model.write_bytes((files / "cnn.safetensors").read_bytes())
    original = model.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.safetensors").symlink_to(model)
    os.link(model, tmp_path / "hard.safetensors")
    (tmp_path / "out_link.safetensors").symlink_to(tmp_path / "out.safetensors")  # dangling until OUT exists
    out = ["-o", tmp_path / "out.safetensors", "--rule", "*.weight=l1:0.5"]
    cases = [(["same file as the input"], ["prune", model, *out, "--masks", masks]) for masks in
             (model, tmp_path / "sub" / ".." / "model.safetensors", tmp_path / "link.safetensors",
              tmp_path / "hard.safetensors")]
    cases.append((["same file as the output"], ["prune", model, *out, "--masks", tmp_path / "out_link.safetensors"]))
    check_all(cases, run_all([args for _, args in cases]))
    assert model.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["hard.safetensors", "link.safetensors", "model.safetensors",
                                            "out_link.safetensors", "sub"]
    run_ok("prune", model, "-o", model, "--rule", "*.weight=l1:0.5")  # OUT == IN stays allowed
    assert model.read_bytes() != original


@pytest.fixture
def odd_names(tmp_path):
    from jaxprune.cli import write_checkpoint

    path = tmp_path / "in.safetensors"
    names = ["features.10.weight", "features.3.weight", "features.3.bias", "evil\x1b[2J.weight"]
    write_checkpoint(str(path), {name: np.arange(1.0, 5.0, dtype=np.float32).reshape(2, 2) for name in names})
    return path


def test_names_with_terminal_escapes_are_escaped_in_tables_and_errors(odd_names, tmp_path):
    """A name holding \x1b[2J cleared the user's screen."""
    stdout = run_ok("prune", odd_names, "-o", tmp_path / "out.safetensors", "--rule", "*.weight=l1:0.5", "--seed", "0")
    report = run_ok("report", tmp_path / "out.safetensors")
    error = run_cli("prune", odd_names, "-o", tmp_path / "o.safetensors", "--rule", "nothing=l1:1", "--seed", "0")
    for text in (stdout, report, error.stderr):
        assert "\x1b" not in text and "evil\\x1b[2J.weight" in text
    assert_error(error, "'nothing'")


def test_tables_list_tensors_in_natural_order_and_files_keep_sorted_names(odd_names, tmp_path):
    """features.10 was listed before features.3."""
    from jaxprune import _safetensors

    stdout = run_ok("prune", odd_names, "-o", tmp_path / "out.safetensors", "--rule", "*.weight=l1:0.5", "--seed", "0")
    assert [line.split()[0] for line in stdout.splitlines()[1:5]] == [
        "evil\\x1b[2J.weight", "features.3.bias", "features.3.weight", "features.10.weight"]
    stored, _ = _safetensors.read(tmp_path / "out.safetensors")
    assert list(stored) == sorted(stored) and len(stored) == 4


def test_deterministic_rules_need_no_seed(odd_names, tmp_path):
    """--seed was required even when no rule is random."""
    doc = json.loads(run_ok("prune", odd_names, "-o", tmp_path / "o.safetensors", "--rule", "*.weight=l1:1", "--json"))
    assert doc["seed"] is None and doc["total"]["pruned"] == 3


def test_a_broken_pipe_exits_quietly(files, tmp_path):
    """`jaxprune report x | head -1` was an error with exit status 2."""
    for args in (["report", files / "cnn.pt"],
                 ["prune", files / "cnn.pt", "-o", tmp_path / "out.safetensors", "--rule", "*.weight=l1:0.5"]):
        proc = subprocess.Popen([sys.executable, "-m", "jaxprune", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=ENV)
        proc.stdout.close()  # the reader is gone before anything is printed
        stderr = proc.stderr.read()
        assert proc.wait(timeout=TIMEOUT) == 141, stderr
        assert stderr == b""
    assert (tmp_path / "out.safetensors").exists()


def test_ndim_qualifier_tells_a_conv_weight_from_a_batchnorm_weight(files, tmp_path):
    stdout = run_ok("prune", files / "cnn.pt", "-o", tmp_path / "out.safetensors", "--masks", tmp_path / "m.pt",
                    "--rule", "*.weight[ndim=4]=ln-structured:0.25:n=2:dim=0", "--rule", "*.weight[ndim<2]=skip",
                    "--rule", "*.weight=l1:0.5")
    net = small_cnn()
    prune.ln_structured(net[0], "weight", amount=0.25, n=2, dim=0)
    prune.l1_unstructured(net[4], "weight", amount=0.5)
    masks = load_pt(tmp_path / "m.pt")
    assert sorted(masks) == ["0.weight", "4.weight"]  # the BatchNorm weight 1.weight is left alone
    assert torch.equal(masks["0.weight"], net[0].weight_mask.bool())
    assert torch.equal(masks["4.weight"], net[4].weight_mask.bool())
    assert "*.weight[ndim=4]" not in stdout and "ln-structured:0.25:n=2:dim=0  2/8 dim-0 slices" in stdout
    results = run_all([["prune", files / "cnn.pt", "-o", tmp_path / "x.safetensors", "--rule", rule]
                       for rule in ("*.weight[ndim=3]=l1:0.5", "*.weight[ndim~3]=l1:0.5")])
    assert_error(results[0], "'*.weight[ndim=3]'", "matches no")
    assert_error(results[1], "[ndim=N]")
    assert not (tmp_path / "x.safetensors").exists()


def test_wrapped_checkpoints_are_read_with_key_and_written_back_whole(tmp_path):
    state = small_cnn().state_dict()
    torch.save({"model": state, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "wrapped.pt")
    torch.save({"trainer": {"state_dict": state}, "hparams": {"width": 8}}, tmp_path / "lightning.pt")
    rule = ["--rule", "4.weight=l1:0.5"]
    results = run_all([
        ["prune", tmp_path / "wrapped.pt", "-o", tmp_path / "x.pt", *rule],
        ["report", tmp_path / "lightning.pt"],
        ["prune", tmp_path / "wrapped.pt", "-o", tmp_path / "x.pt", *rule, "--key", "state_dict"],
        ["prune", tmp_path / "wrapped.pt", "-o", tmp_path / "out.pt", *rule, "--key", "model"],
        ["prune", tmp_path / "lightning.pt", "-o", tmp_path / "light.safetensors", *rule, "--key",
         "trainer.state_dict"],
        ["report", tmp_path / "lightning.pt", "--key", "trainer.state_dict", "--json"],
    ])
    assert_error(results[0], "entry 'model' is not a tensor", "pass --key with one of: 'model'")
    assert_error(results[1], "pass --key with one of: 'trainer.state_dict'")
    assert_error(results[2], "no entry 'state_dict'", "'model'", "'epoch'")
    for result in results[3:]:
        assert result.returncode == 0, result.stderr
    assert "inside the checkpoint's 'model'" in results[3].stdout
    out = load_pt(tmp_path / "out.pt")
    assert sorted(out) == ["epoch", "model", "optimizer"] and out["epoch"] == 3 and out["optimizer"] == {"lr": 0.1}
    assert int((out["model"]["4.weight"] == 0).sum()) == 640 and torch.equal(out["model"]["0.weight"], state["0.weight"])
    light = safetensors_torch.load_file(str(tmp_path / "light.safetensors"))  # the state_dict alone
    assert sorted(light) == sorted(state) and int((light["4.weight"] == 0).sum()) == 640
    assert json.loads(results[5].stdout)["total"]["size"] == 1547


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_while_writing_leaves_no_temporary_file(signame, files, tmp_path):
    """Killed while writing, the hidden temporary file (hundreds of MB for a real model) stayed."""
    import signal

    signum = getattr(signal, signame)
    script = ("import os, sys; from jaxprune.cli import main; "
              f"os.fsync = lambda fd: os.kill(os.getpid(), {int(signum)}); sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-c", script, "prune", str(files / "cnn.pt"), "-o",
                             str(out / "o.safetensors"), "--masks", str(out / "m.pt"), "--rule", "*.weight=l1:0.5"],
                            check=False, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert result.returncode == -signum, result.stderr
    assert os.listdir(out) == []


def test_stale_temporary_files_of_killed_runs_are_removed(files, tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    stale = f".out.safetensors.jaxprune-{dead}-k3j2.tmp"
    kept = [f".out.safetensors.jaxprune-{os.getpid()}-live.tmp",  # a running process's
            f".other.safetensors.jaxprune-{dead}-k3j2.tmp",  # another target's
            "out.safetensors.tmp", ".out.safetensors.jaxprune-x.tmp"]  # not our pattern
    for name in [stale, *kept]:
        (tmp_path / name).write_bytes(b"partial")
    run_ok("prune", files / "cnn.safetensors", "-o", tmp_path / "out.safetensors", "--rule", "*.weight=l1:0.5")
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, "out.safetensors"])


def test_report_reads_npz_and_a_mask_holding_2_keeps_in_the_cli_and_in_interop(tmp_path):
    np.savez(tmp_path / "w.npz", w=np.array([[1.0, 0.0], [0.0, 0.0]], np.float32), b=np.ones(3))
    doc = json.loads(run_ok("report", tmp_path / "w.npz", "--json"))
    assert doc["format"] == "npz" and doc["total"] == {"zeros": 3, "size": 7, "sparsity": 3 / 7}

    pairs = {"fc.weight_orig": torch.ones(2, 2), "fc.weight_mask": torch.tensor([[2.0, 0.0], [1.0, 2.0]])}
    torch.save(pairs, tmp_path / "pairs.pt")
    rows = json.loads(run_ok("report", tmp_path / "pairs.pt", "--json"))["tensors"]
    assert rows[0]["name"] == "fc.weight" and rows[0]["zeros"] == 1
    _, masks = interop.read_pruned(pairs)
    assert np.asarray(masks["fc.weight"]).tolist() == [[True, False], [True, True]]


def test_hostile_inputs_fail_in_one_line_without_hanging(tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.pt"
    zero.symlink_to("/dev/zero")
    deep = tmp_path / "deep.safetensors"
    deep.write_bytes((100_000).to_bytes(8, "little") + b"[" * 100_000)
    huge = tmp_path / "huge.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}'
    huge.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    cases = [([str(fifo), "not a regular file"], ["report", fifo]),
             ([str(zero), "not a regular file"], ["prune", zero, "-o", tmp_path / "o.pt", "--rule", "*=l1:1"]),
             ([str(deep), "nests too deeply"], ["report", deep]),
             ([str(huge), "non-negative integers"], ["report", huge])]
    check_all(cases, run_all([args for _, args in cases]))


def test_the_grammar_is_written_once_and_the_help_and_readme_show_it(capsys):
    from jaxprune.cli import METHODS, grammar, main

    text = grammar()
    assert all(f"  {m.usage} " in text for m in METHODS.values())
    assert main(["prune", "--help"]) == 0
    assert text in capsys.readouterr().out
    assert text in (ROOT / "README.md").read_text()
