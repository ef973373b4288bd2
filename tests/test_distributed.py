"""fit() under torchrun: two CPU processes (gloo) must end with identical weights."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

WORKER = textwrap.dedent('''
    import sys, torch, torch.nn as nn
    import torch.distributed as dist
    from segcourse.data import ShapesDataset
    from segcourse.train import fit, setup_distributed, seed_everything

    out = sys.argv[1]
    rank, world = setup_distributed("gloo")
    assert world == 2, world
    seed_everything(100 + rank)   # deliberately different initial weights: DDP must sync them
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 5, 1))
    data = ShapesDataset(48, size=24, seed=0)
    history = fit(model, data, ShapesDataset(10, size=24, seed=1), epochs=2, batch_size=8,
                  device="cpu", progress=False, num_classes=5)
    torch.save({"state": model.state_dict(), "steps": len(history["train_loss"]),
                "val_miou": history["val_miou"]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
''')


def _torchrun_two_processes(worker: str, tmp_path) -> None:
    """Run ``worker`` (source text) under torchrun with two CPU processes; it writes to tmp_path."""
    script = tmp_path / "worker.py"
    script.write_text(worker)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_processes_end_with_identical_weights(tmp_path):
    _torchrun_two_processes(WORKER, tmp_path)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["state"].keys() == r1["state"].keys()
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    # the weights moved away from the (synchronised) initialisation, so training happened
    torch.manual_seed(100)  # what rank 0 started from
    init = torch.nn.Conv2d(3, 8, 3, padding=1).weight
    assert not torch.allclose(r0["state"]["0.weight"], init)
    # validation metrics were reduced over both shards, so both ranks report the same mIoU
    assert r0["val_miou"] == r1["val_miou"]


EVAL_WORKER = textwrap.dedent('''
    import sys, torch, torch.nn as nn
    import torch.distributed as dist
    from segcourse.data import ShapesDataset
    from segcourse.train import evaluate, setup_distributed

    out = sys.argv[1]
    rank, world = setup_distributed("gloo")
    torch.manual_seed(0)                       # the same weights on both ranks
    model = nn.Conv2d(3, 5, 3, padding=1)
    one_image = ShapesDataset(1, size=24, seed=3)   # rank 1's shard is empty
    scores = evaluate(model, one_image, device="cpu")   # no num_classes: K comes from rank 0
    torch.save({"miou": scores["miou"], "cm": scores["confusion_matrix"]}, f"{out}/eval{rank}.pt")
    dist.destroy_process_group()
''')


def test_distributed_evaluate_with_an_empty_shard_and_no_num_classes(tmp_path):
    from segcourse.data import ShapesDataset
    from segcourse.metrics import confusion_matrix

    _torchrun_two_processes(EVAL_WORKER, tmp_path)
    # independently: the confusion matrix of the one image, computed in this process
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 5, 3, padding=1)
    image, mask = ShapesDataset(1, size=24, seed=3)[0]
    with torch.no_grad():
        expected = confusion_matrix(model(image[None]).argmax(1), mask[None], 5)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"eval{rank}.pt", weights_only=True)
        assert torch.equal(got["cm"], expected), rank
