"""jaxprune.interop.to_jax / to_torch: DLPack, zero-copy rules, copies, dtypes, aliasing."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from jaxprune import interop  # noqa: E402

ROUND_TRIP = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
              torch.uint8, torch.bool]


def shares(array: jax.Array, tensor) -> bool:
    return array.unsafe_buffer_pointer() == tensor.data_ptr()


@pytest.mark.parametrize("dtype", ROUND_TRIP, ids=str)
def test_dtypes_round_trip_exactly_and_zero_copy(dtype):
    source = (torch.randn(6, 5) * 50).to(dtype)
    array = interop.to_jax(source)
    assert shares(array, source)
    back = interop.to_torch(array)
    assert back.dtype == dtype and torch.equal(back, source)
    assert back.data_ptr() == array.unsafe_buffer_pointer()


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.nn.Parameter(torch.randn(4, 3)),
        lambda: torch.randn(4, 3, requires_grad=True) * 2,
        lambda: torch.randn(8, 6)[::2],
        lambda: torch.randn(8, 6)[:, 1:4],
        lambda: torch.randn(1, 6).expand(5, 6),
        lambda: torch.randn(8, 6).T,
        lambda: torch.randn(100)[3:40],
        lambda: torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last).weight,
        lambda: torch.tensor(2.5),
        lambda: torch.zeros(0, 4),
        lambda: torch.zeros(3, 0),
    ],
    ids=["parameter", "requires-grad", "step-slice", "column-slice", "expand", "transpose",
         "storage-offset", "channels-last", "0-d", "empty-0x4", "empty-3x0"],
)
def test_any_layout_converts_with_equal_values(make):
    tensor = make()
    array = interop.to_jax(tensor)
    assert array.shape == tuple(tensor.shape)
    np.testing.assert_array_equal(np.asarray(array), tensor.detach().numpy())


def test_compact_views_stay_zero_copy():
    weight = torch.nn.Conv2d(3, 8, 3).weight
    assert shares(interop.to_jax(weight), weight)  # a Parameter, detached without a copy
    base = torch.randn(64, 32)
    assert shares(interop.to_jax(base.T), base)  # a permutation of a compact buffer
    assert shares(interop.to_jax(base[16:32]), base[16:32])  # 64-byte aligned row slice


def test_view_and_snapshot_policy():
    tensor = torch.randn(32, 16)
    original = tensor.clone()
    view = interop.to_jax(tensor)
    snapshot = interop.to_jax(tensor, copy=True)
    assert not shares(snapshot, tensor)
    tensor.mul_(-3.0)
    np.testing.assert_array_equal(np.asarray(snapshot), original.numpy())  # the snapshot is untouched
    np.testing.assert_array_equal(np.asarray(view), tensor.numpy())  # the view sees the change (documented)


def test_results_computed_from_a_snapshot_never_change():
    import jaxprune as jp

    tensor = torch.randn(64, 64)
    mask = jax.block_until_ready(jp.l1_unstructured(interop.to_jax(tensor, copy=True), 0.5))
    expected = np.asarray(mask).copy()
    tensor.zero_()
    np.testing.assert_array_equal(np.asarray(mask), expected)


def test_to_torch_copy_is_independent():
    array = jnp.arange(6.0)
    tensor = interop.to_torch(array, copy=True)
    tensor.add_(1)
    np.testing.assert_array_equal(np.asarray(array), np.arange(6.0))


def test_to_torch_accepts_numpy():
    assert torch.equal(interop.to_torch(np.array([1, 2], np.int32)), torch.tensor([1, 2], dtype=torch.int32))


def test_wide_dtypes_follow_x64_off():
    assert interop.to_jax(torch.ones(3, dtype=torch.float64)).dtype == jnp.float32
    assert interop.to_jax(torch.tensor([2**40], dtype=torch.int64)).dtype == jnp.int32


def test_wide_dtypes_stay_64_bit_with_x64():
    script = textwrap.dedent(
        """
        import jax, torch, numpy as np
        from jaxprune import interop
        t = torch.randn(5, dtype=torch.float64)
        a = interop.to_jax(t)
        assert a.dtype == np.float64 and a.unsafe_buffer_pointer() == t.data_ptr()
        i = torch.tensor([2**40, -3], dtype=torch.int64)
        assert interop.to_jax(i).tolist() == [2**40, -3]
        assert interop.to_torch(interop.to_jax(i)).dtype == torch.int64
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={"JAX_ENABLE_X64": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float8_e4m3fn], ids=str)
def test_unsupported_dtypes_raise_naming_the_dtype(dtype):
    with pytest.raises(TypeError, match=str(dtype).replace("torch.", "")):
        interop.to_jax(torch.zeros(2).to(dtype))


def test_bad_inputs():
    with pytest.raises(TypeError, match="torch.Tensor"):
        interop.to_jax(np.ones(3))
    with pytest.raises(TypeError, match="jax.Array"):
        interop.to_torch([1, 2])
    with pytest.raises(TypeError, match="complex64"):
        interop.to_torch(jnp.ones(2, jnp.complex64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_becomes_a_gpu_array_without_host_round_trip():
    tensor = torch.randn(128, 64, device="cuda")
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(RuntimeError, match="no gpu backend"):
            interop.to_jax(tensor)
        return
    array = interop.to_jax(tensor)
    assert array.devices().pop().platform == "gpu"
    assert shares(array, tensor)
    assert interop.to_torch(array).device.type == "cuda"


def test_cuda_without_jax_gpu_names_the_fix(monkeypatch):
    """A tensor on a device JAX has no backend for fails with the fix in the message."""

    class FakeDevice:
        type = "cuda"

        def __str__(self) -> str:
            return "cuda:0"

    from jaxprune.interop import _tensors

    tensor = torch.randn(2)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: FakeDevice()))
    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("JAX has a GPU here")
    with pytest.raises(RuntimeError, match=r"pip install 'jax\[cuda12\]'"):
        _tensors.to_jax(tensor)

