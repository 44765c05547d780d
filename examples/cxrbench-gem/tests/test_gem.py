# tests/test_gem.py in the cxrbench-gem package
import cxrbench_gem

from cxrbench.testing import HeadContract, benchmark_head, make_head


class TestGeMHead(HeadContract):
    name = "gem"  # the registered name
    options = {"p": 4.0}  # its options block, as in a grid
    plugins = [cxrbench_gem]  # hermetic; leave out to test the installed entry point


def test_gem_speed(benchmark):
    head = make_head("gem", 1024, 14, {"p": 4.0}, registry=TestGeMHead.registry())
    figures = benchmark_head(benchmark, head, (8, 1024, 7, 7), device="cpu")  # or "cuda"
    assert figures["images_per_s"] > 0
