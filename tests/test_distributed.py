"""fit() under torchrun: two CPU processes (gloo) must end with identical weights -- for a
semantic model and for Mask R-CNN -- and evaluation must combine both processes' shards."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

from segcourse.data import InstanceTargets, ShapesDataset
from segcourse.models.mask_rcnn import mask_rcnn

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


def _kill_worker(pid: int, script) -> None:
    """SIGKILL ``pid`` if it still runs ``script`` (a finished worker's pid may be reused;
    where /proc is missing, e.g. macOS, nothing is killed)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if str(script).encode() in f.read():
                os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass


def _torchrun_two_processes(worker: str, tmp_path) -> None:
    """Run ``worker`` (source text) under torchrun with two CPU processes; it writes to tmp_path.

    Output goes to files, not pipes: a worker left behind by a failing torchrun would hold a
    pipe open and block the test forever. Each worker records its pid first, and every one
    still running at the end is killed (torchrun may put them outside its process group).
    """
    script = tmp_path / "worker.py"
    script.write_text("import os, sys\nopen(os.path.join(sys.argv[1], f'pid{os.getpid()}'), "
                      "'w').close()\n" + worker)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path)]
    logs = {name: tmp_path / f"{name}.txt" for name in ("stdout", "stderr")}
    try:
        with open(logs["stdout"], "w") as out, open(logs["stderr"], "w") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired as timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError("torchrun timed out after 300 s\n" + _tails(logs)) \
                    from timeout
    finally:
        for pid_file in tmp_path.glob("pid*"):
            _kill_worker(int(pid_file.name[3:]), script)
    assert proc.returncode == 0, _tails(logs)


def _tails(logs: dict) -> str:
    return "\n".join(path.read_text()[-3000:] for path in logs.values())


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


DETECTION_WORKER = textwrap.dedent('''
    import math, sys, torch
    import torch.distributed as dist
    from segcourse.data import InstanceTargets, ShapesDataset, panoptic_target
    from segcourse.evaluate import evaluate_panoptic
    from segcourse.models.mask_rcnn import mask_rcnn
    from segcourse.train import fit, setup_distributed, seed_everything

    out = sys.argv[1]
    rank, world = setup_distributed("gloo")
    torch.set_num_threads(1)
    seed_everything(100 + rank)   # different initial weights: DDP must sync them
    model = mask_rcnn(num_classes=4)
    data = InstanceTargets(ShapesDataset(8, size=64, seed=0))
    history = fit(model, data, max_steps=2, batch_size=2, lr=1e-3, device="cpu",
                  progress=False, log_every=1)
    assert all(math.isfinite(row["loss"]) for row in history["log"]), history["log"]

    class Oracle(torch.nn.Module):
        """The truth for even scenes, nothing for odd ones (found by the image's pixels)."""
        thing_classes, stuff_classes = (2, 3, 4), (0, 1)

        def __init__(self, scenes):
            super().__init__()
            self.scenes, self.w = scenes, torch.nn.Parameter(torch.zeros(()))

        def forward(self, images):
            outputs = []
            for image in images:
                i = next(i for i, (x, _) in enumerate(self.scenes) if torch.equal(x, image))
                t = self.scenes[i][1]
                keep = torch.arange(len(t["labels"])) < (len(t["labels"]) if i % 2 == 0 else 0)
                panoptic = panoptic_target(t)
                if i % 2:
                    panoptic[..., 0][t["masks"].any(0)] = -1
                outputs.append({"masks": t["masks"][keep], "labels": t["labels"][keep],
                                "scores": torch.ones(int(keep.sum())), "panoptic": panoptic})
            return outputs

    val = InstanceTargets(ShapesDataset(5, size=32, seed=2))   # shards of 3 and 2 scenes
    scores = evaluate_panoptic(Oracle([val[i] for i in range(5)]), val, batch_size=2,
                               return_predictions=True)
    scores["found"] = [len(p["labels"]) for p in scores.pop("predictions")]
    torch.save({"state": model.state_dict(), "log": history["log"], "scores": scores},
               f"{out}/det{rank}.pt")
    dist.destroy_process_group()
''')


def test_two_processes_train_a_detection_model_and_gather_its_evaluation(tmp_path):
    _torchrun_two_processes(DETECTION_WORKER, tmp_path)
    r0 = torch.load(tmp_path / "det0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "det1.pt", weights_only=True)
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    torch.manual_seed(100)  # rank 0's initial weights: training moved them
    init = mask_rcnn(num_classes=4).state_dict()
    assert not torch.equal(init["roi_heads.mask_head.0.weight"],
                           r0["state"]["roi_heads.mask_head.0.weight"])
    # each rank logged its own shard's losses: both finite, and the shards differ
    assert r0["log"][0]["loss"] != r1["log"][0]["loss"]
    # the gathered evaluation is the single-process one: rank 0's shard (scenes 0, 2, 4) is
    # detected perfectly, rank 1's (1, 3) missed entirely, so without the gather the two ranks
    # would report AP 1 and 0; predictions come back in the data set's order
    assert r0["scores"] == r1["scores"]
    val = InstanceTargets(ShapesDataset(5, size=32, seed=2))
    found = r0["scores"].pop("found")
    assert found == [len(val[i][1]["labels"]) if i % 2 == 0 else 0 for i in range(5)]
    assert 0 < r0["scores"]["mask_ap50"] < 1 and 0 < r0["scores"]["pq_things"] < 1
    assert r0["scores"] == pytest.approx(_single_process_oracle_scores(val))


def _single_process_oracle_scores(val):
    """The worker's oracle evaluated here, scene by scene, with the metrics themselves."""
    from segcourse.data import panoptic_target
    from segcourse.metrics import mask_average_precision, panoptic_quality

    predictions, truths, maps = [], [], []
    for i in range(len(val)):
        t = val[i][1]
        n = len(t["labels"]) if i % 2 == 0 else 0
        panoptic = panoptic_target(t)
        if i % 2:
            panoptic[..., 0][t["masks"].any(0)] = -1
        predictions.append({"masks": t["masks"][:n], "labels": t["labels"][:n],
                            "scores": torch.ones(n)})
        truths.append(t)
        maps.append((panoptic, panoptic_target(t)))
    ap = mask_average_precision(predictions, truths)
    pq = panoptic_quality(torch.stack([m[0] for m in maps]), torch.stack([m[1] for m in maps]),
                          (2, 3, 4), (0, 1))
    return {"mask_ap50": ap["ap"], "pq": pq["pq"], "sq": pq["sq"], "rq": pq["rq"],
            "pq_things": pq["things"]["pq"], "pq_stuff": pq["stuff"]["pq"]}
