"""batch_norm over the model layers: one benchmark group per layer, one entry per backend."""
OP = "batch_norm"


def test_batch_norm(bench_case, benchmark):
    bench_case.run(benchmark)
