from cxrbench.config import parse_grid
from cxrbench.grid import expand, localizer_key, stable_digest


def test_cartesian_product_with_exclusions(toy_registry, tiny_grid_dict):
    tiny_grid_dict["seeds"] = [0, 1]
    tiny_grid_dict["exclude"] = [{"head": "max", "seed": 1}]
    grid = parse_grid(tiny_grid_dict, toy_registry)
    cells = expand(grid, lambda spec: "fp")
    combos = [(c.head.name, c.seed) for c in cells]
    assert combos == [("avg", 0), ("avg", 1), ("max", 0)]
    assert len({c.cell_id for c in cells}) == 3


def test_ids_are_stable_and_content_derived(toy_registry, tiny_grid_dict):
    a = expand(parse_grid(tiny_grid_dict, toy_registry), lambda s: "fp")
    reordered = dict(reversed(list(tiny_grid_dict.items())))
    b = expand(parse_grid(reordered, toy_registry), lambda s: "fp")
    assert [c.cell_id for c in a] == [c.cell_id for c in b]
    # grid name and localizers do not change a cell's id; training settings and data do
    renamed = dict(tiny_grid_dict, name="other", localizers=["cam"])
    assert [c.cell_id for c in expand(parse_grid(renamed, toy_registry), lambda s: "fp")] == [c.cell_id for c in a]
    changed = dict(tiny_grid_dict, train={"epochs": 3, "batch_size": 16, "lr": 0.01})
    assert expand(parse_grid(changed, toy_registry), lambda s: "fp")[0].cell_id != a[0].cell_id
    assert expand(parse_grid(tiny_grid_dict, toy_registry), lambda s: "fp2")[0].cell_id != a[0].cell_id
    # decoding threads are speed only: finished cells stay finished when they change
    threads = dict(tiny_grid_dict, train={**tiny_grid_dict["train"], "num_workers": 7})
    assert [c.cell_id for c in expand(parse_grid(threads, toy_registry), lambda s: "fp")] == [c.cell_id for c in a]


def test_localizer_key_depends_on_threshold(toy_registry, tiny_grid_dict):
    grid = parse_grid(tiny_grid_dict, toy_registry)
    cam = grid.localizers[0]
    assert localizer_key(cam, None) == localizer_key(cam, None)
    assert localizer_key(cam, None) != localizer_key(cam, {"policy": "otsu"})


def test_digest_ignores_key_order():
    assert stable_digest({"a": 1, "b": [1, 2]}) == stable_digest({"b": [1, 2], "a": 1})
