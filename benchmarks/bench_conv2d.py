"""conv2d over the model layers: one benchmark group per layer, one entry per backend."""
OP = "conv2d"


def test_conv2d(bench_case, benchmark):
    bench_case.run(benchmark)
