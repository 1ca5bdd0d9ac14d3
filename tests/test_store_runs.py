"""Runs on a disk-backed stream (data.store=disk): the same results as the in-memory path, replay buffers that keep
the uint8 samples they select, a store reused while its folder is unchanged and rebuilt when it changes, and one
clear line for what the store cannot do."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clzoo.config import ConfigError, compose, validate
from clzoo.data import build_stream
from clzoo.data.disk_store import MANIFEST, StoredImages
from clzoo.engine.runner import run

from test_disk_store import make_folder

BASE = ["stream.dataset=imagefolder", "stream.n_tasks=2", "stream.name=folder", "model=mlp", "trainer.epochs=2",
        "trainer.batch_size=8", "trainer.eval_batch_size=7", "log.progress=false", "log.tensorboard=false",
        "log.plots=false", "trainer.num_threads=1", "budget.mb=0.01"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    make_folder(root / "imgs", n_per_class=(20, 18, 16, 22), size=8)
    return root


def _run(folder, tmp_path, method, store, *extra):
    cfg = compose([f"method={method}", *BASE, f"stream.path={folder / 'imgs'}", f"data.root={folder}",
                   f"data.store={store}", f"data.store_dir={tmp_path / 'stores'}", *extra])
    return run(cfg, tmp_path / f"run-{method}-{store}")


@pytest.mark.parametrize("method", ["er", "derpp"])
def test_store_run_matches_the_in_memory_run(folder, tmp_path, method):
    """ER / DER++ on a store-backed stream: batches read from the memory-mapped store in the background give the
    in-memory run's accuracies to the bit, and the buffers hold uint8 samples."""
    kept = {}

    def observer(m, task_id):
        if task_id == 1:
            kept["buffer_x"] = m.buffer.x.clone()

    mem = _run(folder, tmp_path, method, "memory")
    cfg = compose([f"method={method}", *BASE, f"stream.path={folder / 'imgs'}", f"data.root={folder}",
                   "data.store=disk", f"data.store_dir={tmp_path / 'stores'}"])
    disk = run(cfg, tmp_path / "run-disk", observer=observer)
    assert disk["acc_matrix"] == mem["acc_matrix"] and disk["acc_matrix_task_il"] == mem["acc_matrix_task_il"]
    assert disk["stream"]["data_fingerprint"] == mem["stream"]["data_fingerprint"]  # the same decoded data
    assert kept["buffer_x"].dtype == torch.uint8 and disk["memory"]["buffers"][0]["filled"] > 0
    stores = list((tmp_path / "stores").iterdir())
    manifest = json.loads(next(p for p in stores if p.is_dir()).joinpath(MANIFEST).read_text())
    assert manifest["splits"]["train"]["n"] == 76 and manifest["content_sha256"] == mem["stream"]["data_fingerprint"]


def test_store_views_and_validation_split(folder, tmp_path):
    """Tasks hold lazy views; the validation split and a training view stay on disk and read the same pixels."""
    kw = dict(dataset="imagefolder", path=folder / "imgs", n_tasks=2, root=folder)
    mem = build_stream(**kw)
    disk = build_stream(**kw, store="disk", store_dir=tmp_path / "stores")
    for tm, td in zip(mem.tasks, disk.tasks):
        assert isinstance(td.x_train, StoredImages) and td.x_train.shape == tm.x_train.shape
        vm, vd = tm.training_view(0.25, 3), td.training_view(0.25, 3)
        assert isinstance(vd.x_val, StoredImages)
        assert torch.equal(vd.x_val.to("cpu"), vm.x_val) and torch.equal(vd.x_train[5:9], vm.x_train[5:9])
        idx = torch.tensor([4, 0, 3, 3])
        assert torch.equal(vd.x_train.index_select(0, idx), vm.x_train.index_select(0, idx))
        assert torch.equal(torch.cat([vd.x_train, vm.x_train[:2]]), torch.cat([vm.x_train, vm.x_train[:2]]))


def test_store_is_reused_then_rebuilt_when_the_folder_changes(tmp_path):
    from PIL import Image

    make_folder(tmp_path / "imgs", n_per_class=(4, 3), size=8)
    kw = dict(dataset="imagefolder", path=tmp_path / "imgs", n_tasks=1, root=tmp_path, store="disk",
              store_dir=tmp_path / "stores")
    first = build_stream(**kw)
    (store,) = [p for p in (tmp_path / "stores").iterdir() if p.is_dir()]
    built = (store / MANIFEST).stat().st_mtime_ns
    assert build_stream(**kw).tasks[0].n_train == 7 and (store / MANIFEST).stat().st_mtime_ns == built  # reused
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / "imgs" / "train" / "class1" / "new.png")
    again = build_stream(**kw)  # stale: one more image
    assert again.tasks[0].n_train == 8 and (store / MANIFEST).stat().st_mtime_ns != built
    assert again.info["data_fingerprint"] != first.info["data_fingerprint"]


def test_image_size_resizes_into_the_store(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c, (w, h) in enumerate([(12, 9), (7, 15)]):
            (tmp_path / "imgs" / split / f"c{c}").mkdir(parents=True)
            Image.fromarray(np.full((h, w, 3), 40 * c, np.uint8)).save(tmp_path / "imgs" / split / f"c{c}" / "a.jpg")
    with pytest.raises(ValueError, match="different sizes"):
        build_stream(dataset="imagefolder", path=tmp_path / "imgs", n_tasks=1, root=tmp_path)
    stream = build_stream(dataset="imagefolder", path=tmp_path / "imgs", n_tasks=1, root=tmp_path, store="disk",
                          store_dir=tmp_path / "s", image_size=6)
    assert stream.input_shape == (3, 6, 6) and stream.tasks[0].x_test[:].shape == (2, 3, 6, 6)


@pytest.mark.parametrize("overrides, message", [
    (["stream=split_digits", "data.store=disk"], "data.store=disk reads image folders"),
    (["stream=split_digits", "stream.image_size=32"], "add data.store=disk"),
    (["stream=rot_mnist", "stream.dataset=imagefolder", "stream.path=imgs", "data.store=disk"],
     "scenario=domain_il transforms every image up front"),
])
def test_what_the_store_cannot_do_is_one_line(folder, tmp_path, overrides, message):
    cfg = compose([*overrides, f"data.root={folder}", f"data.store_dir={tmp_path}", "log.progress=false"])
    with pytest.raises(ValueError, match=message) as err:
        run(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)


def test_bad_store_values_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="data.store=ram is not a store"):
        validate(compose(["data.store=ram"]))
    with pytest.raises(ConfigError, match="stream.image_size=0 must be >= 1"):
        validate(compose(["stream.image_size=0"]))


SCALE_STREAMS = {  # config -> (folder under data.root, classes per task, image size)
    "tiny_imagenet": ("tiny-imagenet", None, None),
    "imagenet_r": ("imagenet-r", None, 224),
    "imagenet100_b0_inc10": ("imagenet100", None, 224),
    "domainnet": ("domainnet", None, 224),
}


@pytest.mark.parametrize("stream", sorted(SCALE_STREAMS))
def test_scale_streams_compose_and_name_the_layout_when_data_is_missing(tmp_path, stream):
    """The founding papers' streams (for users who have the data) compose, and without the data a run says in one
    line which folder it expected and how to lay it out."""
    folder, _, size = SCALE_STREAMS[stream]
    cfg = compose([f"stream={stream}", f"data.root={tmp_path}", "data.store=disk", "log.progress=false"])
    assert cfg["stream"]["path"] == folder and cfg["stream"]["image_size"] == size
    validate(cfg)
    with pytest.raises(FileNotFoundError) as err:
        run(cfg, tmp_path / "run")
    text = str(err.value)
    assert "\n" not in text and f"{tmp_path / folder}/train/<class>/" in text and cfg["stream"]["layout_help"] in text
    if size is not None:  # images of many sizes: the in-memory path is refused before any data is read
        with pytest.raises(ValueError, match="add data.store=disk"):
            run(compose([f"stream={stream}", f"data.root={tmp_path}", "log.progress=false"]), tmp_path / "run2")


def test_scale_stream_splits_and_class_orders(tmp_path):
    """Each scale stream cuts its classes as its paper does: checked on a stand-in folder with the class count."""
    from PIL import Image

    expected = {"tiny_imagenet": (200, [20] * 10), "imagenet_r": (200, [20] * 10),
                "imagenet100_b0_inc10": (100, [10] * 10), "domainnet": (345, [69] * 5)}
    img = Image.fromarray(np.zeros((3, 4, 3), np.uint8))
    for stream, (n_classes, sizes) in expected.items():
        root = tmp_path / stream
        cfg = compose([f"stream={stream}", f"data.root={root}", "data.store=disk", "stream.image_size=2"])
        for split in ("train", "test"):
            for c in range(n_classes):
                (root / cfg["stream"]["path"] / split / f"n{c:04d}").mkdir(parents=True)
                img.save(root / cfg["stream"]["path"] / split / f"n{c:04d}" / "a.png")
        from clzoo.engine.runner import build_stream_from_config

        s = build_stream_from_config(cfg)
        assert [len(t.classes) for t in s.tasks] == sizes and s.input_shape == (3, 2, 2)
        if stream == "imagenet100_b0_inc10":  # PyCIL / MEMO: np.random.seed(1993); permutation(100)
            assert s.class_order == np.random.RandomState(1993).permutation(100).tolist()
        else:
            assert s.class_order == list(range(n_classes))


AVALANCHE_NAMED = {"avalanche_core50": "CORe50", "avalanche_stream51": "CLStream51",
                   "avalanche_split_tiny_imagenet": "SplitTinyImageNet", "avalanche_clear": "CLEAR",
                   "avalanche_split_cifar100": "SplitCIFAR100"}


@pytest.mark.parametrize("stream", sorted(AVALANCHE_NAMED))
def test_named_avalanche_streams_compose_and_their_factories_take_their_args(stream):
    """Issue 17's named Avalanche configs: each composes to its classic benchmark; where avalanche-lib is installed,
    the factory exists and accepts the config's arguments (building them downloads data, which a test cannot)."""
    import importlib.util
    import inspect

    cfg = compose([f"stream={stream}"])
    assert cfg["stream"]["dataset"] == "avalanche" and cfg["stream"]["benchmark"] == AVALANCHE_NAMED[stream]
    with pytest.raises(ValueError, match="data.store=disk needs a folder for the store: set data.root"):
        build_stream(**{k: v for k, v in cfg["stream"].items() if k != "augment"}, store="disk")
    if importlib.util.find_spec("avalanche") is None:
        return
    from clzoo.interop.avalanche import resolve_factory

    params = inspect.signature(resolve_factory(cfg["stream"]["benchmark"])).parameters
    assert set(cfg["stream"]["args"]) <= set(params), f"{stream}: args the factory does not take"


@pytest.mark.parametrize("method", ["icarl", "ewc", "lwf", "joint"])
def test_whole_task_methods_read_their_task_from_the_store(folder, tmp_path, method):
    """Methods that use a whole task at once (herding, Fisher, distillation targets, keeping everything) read it
    from the store's view and end where the in-memory run ends."""
    mem = _run(folder, tmp_path, method, "memory", "budget.mb=1")
    disk = _run(folder, tmp_path, method, "disk", "budget.mb=1")
    assert disk["acc_matrix"] == mem["acc_matrix"]
