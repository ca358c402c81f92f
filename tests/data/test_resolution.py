import pytest
import torch
from flat_model import Flat
from torch import nn
from torch.utils.data import TensorDataset

from dltips.core.params import ParamError
from dltips.data.resolution import SMALL_SIDE, check_image_resolution, image_shape
from dltips.task import Task


def image_task(*shape, dtype=torch.float32, n=12):
    x = torch.rand(n, *shape).to(dtype) if dtype != torch.long else torch.randint(50, (n, *shape))
    y = torch.arange(n) % 3
    return Task(Flat(x[0].numel()), TensorDataset(x, y), TensorDataset(x[:4], y[:4]))


def run(task, **kwargs):
    findings = check_image_resolution(task, **kwargs)
    assert len(findings) == 1 and findings[0].tip == "image-resolution"
    return findings[0]


@pytest.mark.parametrize("shape, layout, side", [
    ((3, 32, 32), "CHW", 32),
    ((1, 28, 28), "CHW", 28),
    ((28, 28), "HW", 28),
    ((32, 32, 3), "HWC", 32),
    ((3, 64, 95), "CHW", 64),
])
def test_small_images_get_an_info_suggesting_128_px(shape, layout, side):
    f = run(image_task(*shape))
    assert f.status == "info"
    assert f.evidence["shorter_side"] == side and f.evidence["shape"]["layout"] == layout
    assert "128" in f.message and "128" in f.fix and f"{side} px" in f.title


@pytest.mark.parametrize("shape", [(3, 96, 96), (1, 128, 160), (128, 128), (100, 100, 3)])
def test_images_of_96_px_or_more_pass(shape):
    f = run(image_task(*shape, n=4))
    assert f.status == "pass" and f.fix is None
    assert f.evidence["shorter_side"] >= SMALL_SIDE


def test_the_threshold_is_on_the_shorter_side():
    assert run(image_task(1, 95, 200, n=4)).status == "info"
    assert run(image_task(1, 96, 200, n=4)).status == "pass"


def test_uint8_images_count():
    f = run(image_task(3, 32, 32, dtype=torch.uint8))
    assert f.status == "info"


@pytest.mark.parametrize("shape, dtype", [
    ((20,), torch.float32),  # tabular row
    ((50,), torch.long),  # token ids
    ((16, 16), torch.long),  # integer grid: ids, not pixels
    ((100, 8), torch.float32),  # a sequence of feature vectors
    ((5, 32, 32), torch.float32),  # 5 channels: not an image layout
    ((3, 4, 4), torch.float32),  # too small to be an image
])
def test_non_images_are_skipped_with_a_reason(shape, dtype):
    f = run(image_task(*shape, dtype=dtype))
    assert f.status == "skip"
    assert str(tuple(shape)) in f.message and "not images" in f.title


def test_dict_inputs_are_skipped():
    x = {"a": torch.rand(8, 3, 32, 32), "b": torch.rand(8, 2)}
    data = [({k: v[i] for k, v in x.items()}, i % 3) for i in range(8)]
    task = Task(Flat(3 * 32 * 32 + 2), data, data)
    f = run(task)
    assert f.status == "skip" and "dict" in f.message


def test_smallest_sampled_image_decides():
    data = [(torch.rand(3, 128, 128), 0)] * 6 + [(torch.rand(3, 64, 64), 1)]

    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(x.mean((2, 3)))

    f = run(Task(Pool(), data, data))
    assert f.status == "info" and f.evidence["shorter_side"] == 64
    assert f.evidence["sizes"] == [[64, 64], [128, 128]]


def test_target_size_no_larger_than_training_images_passes():
    task = image_task(3, 32, 32)
    assert run(task, target_size=32).status == "pass"
    f = run(task, target_size=224)
    assert f.status == "info" and "224 px" in f.message


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "128"])
def test_bad_target_size_is_rejected(bad):
    with pytest.raises(ValueError, match="target_size"):
        check_image_resolution(image_task(3, 32, 32), target_size=bad)


def test_common_arguments_are_taken():
    task = image_task(3, 32, 32)
    plain = run(task)
    assert run(task, model=task.model, device="auto", seed=5, deadline=60.0).evidence == plain.evidence
    assert run(task, max_items=2).evidence["n_sampled"] == 2
    for bad in ({"max_items": "5"}, {"seed": -1}, {"deadline": "soon"}, {"device": "no-such-device"}):
        with pytest.raises(ParamError, match=next(iter(bad))):
            check_image_resolution(task, **bad)


def test_image_shape_reads_layouts():
    assert image_shape(torch.zeros(3, 10, 20)).__dict__ == {"layout": "CHW", "channels": 3, "height": 10, "width": 20}
    assert image_shape(torch.zeros(10, 20, 4)).layout == "HWC"
    assert image_shape(torch.zeros(10, 50)) is None  # aspect beyond 4
    assert image_shape(torch.zeros(10, 10, dtype=torch.int32)) is None
    assert image_shape([[0.0]]) is None
