"""The benchmark tooling: layer catalogue, work formulas, correctness guard, CLI end to end.

Nothing here asserts a speed; only that what is measured is the right thing, counted right.
"""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cnnops
from cnnops.tools import bench, catalogue, timing
from cnnops.__main__ import main


@pytest.fixture(scope="module")
def layers():
    return catalogue.catalogue()


def find(layers, name):
    matches = [la for la in layers if la.name == name]
    assert len(matches) == 1, f"{name!r}: {len(matches)} matches among {[la.name for la in layers]}"
    return matches[0]


def test_catalogue_has_the_book_layers(layers):
    conv1 = find(layers, "conv2d 1x28x28->6 k5 p2")   # LeNet: Conv2d(1, 6, 5, padding=2) at 28
    assert conv1.out_shape == (6, 28, 28)
    assert conv1.opts["bias"] and conv1.where == ("lenet:" + conv1.where[0].split(":")[1],)
    assert find(layers, "avg_pool2d 6x28x28 k2 s2").out_shape == (6, 14, 14)
    assert find(layers, "conv2d 1x224x224->96 k11 s4 p1").models == ("alexnet",)
    assert find(layers, "conv2d 64x112x112->128 k3 p1").models == ("vgg11",)
    # the 7x7 stem at 96x96 is shared by GoogLeNet, ResNet and DenseNet: one entry, 3 uses
    stem = find(layers, "conv2d 1x96x96->64 k7 s2 p3")
    assert stem.models == ("googlenet", "resnet18", "densenet")
    assert find(layers, "max_pool2d 64x48x48 k3 s2 p1").out_shape == (64, 24, 24)
    assert find(layers, "batch_norm 64x48x48").out_shape == (64, 48, 48)


def test_catalogue_is_deduplicated_and_covers_every_model(layers):
    keys = [la.key for la in layers]
    assert len(keys) == len(set(keys))
    assert {la.op for la in layers} == set(catalogue.OPS)
    seen = {m for la in layers for m in la.models}
    assert seen == set(catalogue.MODELS)
    # ResNet-18 runs the 3x3 64->64 conv at 24x24 four times: merged into one layer
    assert len(find(layers, "conv2d 64x24x24->64 k3 p1").where) == 4


def test_work_formulas_by_hand(layers):
    conv1 = find(layers, "conv2d 1x28x28->6 k5 p2")
    # 2 flops per multiply-add: N * C_out * H_out * W_out * C_in * kh * kw * 2
    assert conv1.flops(2) == 2 * 6 * 28 * 28 * 1 * 5 * 5 * 2 == 470400
    assert conv1.flops(2, "fwdbwd") == 3 * 470400
    x, w, y = 2 * 1 * 28 * 28, 6 * 1 * 5 * 5 + 6, 2 * 6 * 28 * 28
    assert conv1.min_bytes(2) == 4 * (x + w + y) == 44528
    assert conv1.min_bytes(2, "fwdbwd", itemsize=2) == 2 * ((x + w + y) + (y + x + w) + (x + w))
    pool = find(layers, "avg_pool2d 6x28x28 k2 s2")
    assert pool.flops(1) == 6 * 14 * 14 * 4
    assert pool.min_bytes(1) == 4 * (6 * 28 * 28 + 6 * 14 * 14)
    bn = find(layers, "batch_norm 64x48x48")
    assert bn.flops(3) == 5 * 3 * 64 * 48 * 48
    with pytest.raises(ValueError, match="mode"):
        bn.flops(1, "backward")


def test_conv_flops_match_torch_flop_counter(layers):
    """An independent count: torch's FlopCounterMode on the layer's real call (fwd and bwd)."""
    convs = [la for la in layers if la.op == "conv2d"]
    for layer in catalogue.spread(convs, 5):
        inputs = bench.make_inputs(layer, 2, torch.float32, "nchw", "meta", "fwdbwd")
        with FlopCounterMode(display=False) as counter:
            out = torch.nn.functional.conv2d(inputs["input"], inputs["weight"], inputs["bias"],
                                             **{k: layer.opts[k] for k in
                                                ("stride", "padding", "dilation", "groups")})
            forward_flops = counter.get_total_flops()
            torch.autograd.grad(out, [inputs["input"], inputs["weight"]], inputs["grad_output"])
        assert layer.flops(2) == forward_flops, layer.name
        assert layer.flops(2, "fwdbwd") == counter.get_total_flops(), layer.name


def test_spread_picks_from_smallest_to_largest(layers):
    pools = [la for la in layers if la.op == "max_pool2d"]
    picked = catalogue.spread(pools, 2)
    work = sorted(la.flops(1) for la in pools)
    assert sorted(la.flops(1) for la in picked) == [work[0], work[-1]]
    assert catalogue.spread(pools, 0) == pools


def test_slow_backends_only_on_tiny_layers(layers):
    big = find(layers, "conv2d 64x112x112->128 k3 p1")
    assert "loops" in bench.skip_reason("reference", big, 8, "cpu")
    tiny = find(layers, "conv2d 10x5x5->10 k1")
    assert bench.skip_reason("reference", tiny, 1, "cpu") is None
    assert bench.skip_reason("torch", big, 8, "cpu") is None


def test_wrong_result_is_reported_not_timed(layers, monkeypatch):
    layer = find(layers, "conv2d 10x5x5->10 k1")
    real_forward = bench.forward

    def off_by_a_little(layer, inputs, backend):
        out = real_forward(layer, inputs, backend)
        return out * 1.001 if backend == "reference" else out
    monkeypatch.setattr(bench, "forward", off_by_a_little)
    args = bench.argparse.Namespace(seed=0, budget=0.01, cuda_graph=False)
    rows = bench.measure(layer, 1, torch.float32, "nchw", "fwd", torch.device("cpu"),
                         ["reference"], args)
    assert [r["backend"] for r in rows] == ["torch", "reference"]
    assert rows[0]["status"] == "ok" and rows[0]["time_s"] > 0
    assert rows[1]["status"] == "wrong" and "time_s" not in rows[1]
    assert rows[1]["rel_error"] == pytest.approx(1e-3, rel=1e-3)


def test_bench_cli_writes_table_json_and_chart(tmp_path, capsys):
    out = tmp_path / "bench"
    status = main(["bench", "--device", "cpu", "--models", "lenet", "--per-op", "1",
                   "--batch", "1", "--mode", "fwd,fwdbwd", "--layouts", "nchw,channels_last",
                   "--backends", "reference", "--budget", "0.01", "--probe-budget", "0.02",
                   "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "vs torch" in text and "roofline" in text and "bandwidth" in text
    report = json.loads((out / "bench.json").read_text())
    assert report["environment"]["torch"] == torch.__version__
    assert report["ceilings"]["bandwidth"] > 0 and report["ceilings"]["peak_flops"]["float32"] > 0
    rows = report["results"]
    # LeNet has conv2d and avg_pool2d only: one layer each, 2 modes x 2 layouts x 2 backends
    assert len(rows) == 2 * 2 * 2 * 2
    assert {r["op"] for r in rows} == {"conv2d", "avg_pool2d"}
    torch_rows = {(r["layer"], r["layout"], r["mode"]): r for r in rows
                  if r["backend"] == "torch"}
    limits = report["ceilings"]["cpu_limits"]
    assert limits["copy_bandwidth"] > 0 and limits["copy_source"]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["time_s"] > 0 and 0 < row["roofline"]
        # every backend, torch too, is checked against torch in float64 before it is timed
        assert 0 <= row["rel_error"] <= 1e-4
        # the speed-up is the torch row's time over this row's, timed in the same run
        baseline = torch_rows[(row["layer"], row["layout"], row["mode"])]
        assert row["speedup"] == pytest.approx(baseline["time_s"] / row["time_s"], rel=1e-12)
        # fractions of the CPU's limits are the row's own rate over the limit
        assert row["copy_fraction"] == pytest.approx(
            row["bytes"] / row["time_s"] / limits["copy_bandwidth"], rel=1e-12)
        assert ("fma_peak_fraction" in row) == (limits["fma_peak_flops"] is not None)
    assert (out / "bench.md").read_text().count("\n| ") == len(rows) + 1
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "copy bandwidth" in text and "FMA peak" in text


def test_bench_cli_lists_unavailable_backend_as_skipped(tmp_path, monkeypatch):
    # triton made unavailable here whatever this machine has, so the skip path always runs
    triton = cnnops.get_backend("triton")
    monkeypatch.setattr(triton, "unavailable_reason", lambda device: "stand-in: not here")
    status = main(["bench", "--device", "cpu", "--models", "lenet", "--ops", "avg_pool2d",
                   "--per-op", "1", "--batch", "1", "--backends", "triton,native",
                   "--budget", "0.01", "--probe-budget", "0.02", "--no-chart",
                   "--out", str(tmp_path)])
    assert status == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [r["backend"] for r in rows] == ["torch", "triton", "native"]
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "skipped" and rows[1]["reason"] == "stand-in: not here"
    native_here = "native" in cnnops.available_backends("cpu")
    assert rows[2]["status"] == ("ok" if native_here else "skipped"), rows[2]
    assert not (tmp_path / "bench.png").exists()


def fake_probe_library(fma_gflops, copy_gbps):
    class Lib:
        def cnnops_cpu_fma_peak_gflops(self, threads, seconds):
            return fma_gflops * threads

        def cnnops_cpu_copy_gbps(self, threads, seconds):
            return copy_gbps
    return Lib()


def test_cpu_limits_come_from_the_extension_probes_when_built(monkeypatch):
    monkeypatch.setattr(timing, "_peak_library", lambda: (fake_probe_library(100.0, 8.0), None))
    limits = timing.cpu_limits(threads=2, seconds=0.01)
    assert limits["fma_peak_flops"] == 200e9 and limits["copy_bandwidth"] == 8e9
    assert "peak.cpp" in limits["fma_source"] and "peak.cpp" in limits["copy_source"]
    rows = [dict(flops=50e9, bytes=2e9, time_s=0.5, dtype="float32"),
            dict(flops=50e9, bytes=2e9, time_s=0.5, dtype="float64"),
            dict(flops=1, bytes=1, dtype="float32", status="skipped")]
    bench.add_cpu_limits(rows, limits)
    assert rows[0]["fma_peak_fraction"] == pytest.approx(0.5)   # 100 GFLOP/s of 200
    assert rows[1]["fma_peak_fraction"] == pytest.approx(1.0)   # float64: half the lanes
    assert rows[0]["copy_fraction"] == pytest.approx(0.5)       # 4 GB/s of 8
    assert "fma_peak_fraction" not in rows[2]


def test_cpu_limits_fallback_is_labelled(monkeypatch):
    monkeypatch.setattr(timing, "_peak_library", lambda: (None, "not built"))
    limits = timing.cpu_limits(threads=1, seconds=0.01)
    assert limits["fma_peak_flops"] is None and limits["fma_source"].startswith("n/a")
    assert limits["copy_bandwidth"] > 0 and "fallback" in limits["copy_source"]
    best = timing.best_cpu_limits(limits, dict(limits, copy_bandwidth=1.0))
    assert best["copy_bandwidth"] == limits["copy_bandwidth"] and best["fma_peak_flops"] is None


def test_real_cpu_limit_probes_when_the_extension_has_them():
    lib, why_not = timing._peak_library()
    if lib is None:
        pytest.skip(why_not)
    limits = timing.cpu_limits(threads=1, seconds=0.05)
    # a CPU core does at least one float32 FMA per cycle (2 flops at >= 1 GHz) and copies
    # at least 1 GB/s; nothing reaches 1 TFLOP/s or 1 TB/s on one core
    assert 2e9 <= limits["fma_peak_flops"] <= 1e12
    assert 1e9 <= limits["copy_bandwidth"] <= 1e12
