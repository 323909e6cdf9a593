"""max_pool2d over the model layers: one benchmark group per layer, one entry per backend."""
OP = "max_pool2d"


def test_max_pool2d(bench_case, benchmark):
    bench_case.run(benchmark)
