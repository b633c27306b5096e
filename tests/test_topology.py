"""The release's module sequence (`topology.modules`): SPEC §6's numbering, sizes, parameters."""

import pytest

from overfeat_tf.architecture import topology
from overfeat_tf.architecture.config import ACCURATE, FAST, TINY
from overfeat_tf.models.backbone import OverFeat

# SPEC §6 / README "Layer numbers", written out by hand: index n is `overfeat -L n`.
FAST_TABLE = [
    ("normalize", "normalize"),
    ("conv1_linear", "conv"),
    ("conv1", "relu"),
    ("pool1", "pool"),
    ("conv2_linear", "conv"),
    ("conv2", "relu"),
    ("pool2", "pool"),
    ("pad3", "pad"),
    ("conv3_linear", "conv"),
    ("conv3", "relu"),
    ("pad4", "pad"),
    ("conv4_linear", "conv"),
    ("conv4", "relu"),
    ("pad5", "pad"),
    ("conv5_linear", "conv"),
    ("conv5", "relu"),
    ("pool5", "pool"),
    ("fc6_linear", "fc"),
    ("fc6", "relu"),
    ("fc7_linear", "fc"),
    ("fc7", "relu"),
    ("fc8", "fc"),
]
ACCURATE_TABLE = [
    *FAST_TABLE[:16],
    ("pad6", "pad"),
    ("conv6_linear", "conv"),
    ("conv6", "relu"),
    ("pool6", "pool"),
    *FAST_TABLE[17:],
]


@pytest.mark.parametrize(
    "config, table, count",
    [(FAST, FAST_TABLE, 22), (TINY, FAST_TABLE, 22), (ACCURATE, ACCURATE_TABLE, 25)],
    ids=["fast", "tiny", "accurate"],
)
def test_numbering_is_the_spec_table(config, table, count):
    seq = topology.modules(config)
    assert len(seq) == len(table) == count
    assert [(m.name, m.kind) for m in seq] == table
    assert topology.module_names(config) == [name for name, _ in table]
    assert [m.name for m in seq if m.dense] == [table[-6][0]]  # the last pool: 16 / 19


def test_fast_and_accurate_parameters():
    """Paper Table 1 / Table 3: kernels, strides, paddings, pools and widths."""
    fast = {m.name: m for m in topology.modules(FAST)}
    assert (fast["conv1_linear"].kernel, fast["conv1_linear"].stride) == (11, 4)
    assert fast["pool1"].pool == fast["pool5"].pool == 2
    assert fast["pad3"].padding == 1 and fast["pad3"].layer == "conv3"
    assert fast["fc6_linear"].weight_shape == (6, 6, 1024, 3072)
    assert fast["fc8"].weight_shape == (1, 1, 4096, 1000)
    accurate = {m.name: m for m in topology.modules(ACCURATE)}
    assert (accurate["conv1_linear"].kernel, accurate["conv1_linear"].stride) == (7, 2)
    assert accurate["pool1"].pool == accurate["pool6"].pool == 3
    assert accurate["fc6_linear"].weight_shape == (5, 5, 1024, 4096)
    assert [m.layer for m in topology.weighted(ACCURATE)] == [
        *(f"conv{i}" for i in range(1, 7)),
        "fc6",
        "fc7",
        "fc8",
    ]
    with pytest.raises(ValueError, match="no weights"):
        accurate["pool6"].weight_shape  # noqa: B018


def test_split_at_the_dense_pool():
    trunk, pool, head = topology.split(ACCURATE)
    assert (len(trunk), pool.name, [m.name for m in head]) == (
        19,
        "pool6",
        ["fc6_linear", "fc6", "fc7_linear", "fc7", "fc8"],
    )


@pytest.mark.parametrize(
    "config, count", [(FAST, 145_920_872), (ACCURATE, 144_656_488)], ids=["fast", "accurate"]
)
def test_parameter_count_is_the_models(config, count):
    assert topology.parameter_count(config) == count
    assert OverFeat(config).count_params() == count


@pytest.mark.parametrize(
    "adaptation, order",
    [
        ((), ["fc6", "reg_fc1", "fc7", "reg_fc2", "reg_out", "fc8"]),
        ((8,), ["fc6", "fc7", "reg_fc1", "adapt1", "reg_fc2", "reg_out", "fc8"]),
        ((8, 8), ["fc6", "fc7", "adapt1", "reg_fc1", "adapt2", "reg_fc2", "reg_out", "fc8"]),
    ],
)
def test_weighted_layer_order_is_the_saved_files(adaptation, order):
    """A `.keras` file stores weights per layer class in `model.layers` order (by graph
    depth); this is the order of the files saved so far, which must keep loading."""
    model = OverFeat(
        TINY, regressor="class_agnostic", adaptation=adaptation, kernel_initializer="zeros"
    )
    names = [layer.name for layer in model.layers if layer.weights]
    assert names == [f"conv{i}" for i in range(1, 6)] + order
