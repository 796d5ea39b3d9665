"""The server's data: a node answering the statistics request with garbage is ignored, not fatal."""

from common.data.datasets import load_builtin
from common.data.tabular import local_statistics
from fl_server.data import resolve_server_data


async def test_statistics_from_a_misbehaving_node_are_ignored_and_the_rest_build_the_schema():
    iris = load_builtin("iris", seed=1)
    good = local_statistics(iris.train, iris.target, [])

    async def gather(request):
        return {"a": good, "b": good, "liar": None, "junk": {"target": iris.target, "columns": [1, 2]}}

    data = await resolve_server_data(dataset="iris", holdout_csv=None, target=None, schema_file=None, categorical=[],
                                     seed=1, gather_statistics=gather)
    assert data.spec.num_classes == 3 and data.spec.input_shape == (4,)
    assert len(data.y_holdout) > 0
