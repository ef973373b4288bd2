"""segcourse: tested reference implementations for a course on image segmentation in PyTorch.

The chapters of the book import from here. Sub-packages and modules, by what they hold:

- ``segcourse.data``         synthetic shapes, Oxford-IIIT Pet, joint transforms, detection targets
- ``segcourse.ops``          generic operators: boxes, NMS, RoIAlign, poolers, matching, frozen BN
- ``segcourse.models``       models only, one idea per file, and the registry (``build``)
- ``segcourse.losses``       cross-entropy, Dice, Focal, Lovasz-Softmax, boundary loss
- ``segcourse.metrics``      confusion matrix and mIoU, the boundary band, mask AP, PQ, NoC
- ``segcourse.train``        ``fit``: the one training loop, for every model
- ``segcourse.evaluate``     ``evaluate``, ``predict``, ``evaluate_instances``, ``_panoptic``,
                             ``evaluate_clicks`` (interactive segmentation)
- ``segcourse.checkpoints``  ``save_checkpoint`` / ``load_checkpoint``
- ``segcourse.tta``          test-time augmentation; ``segcourse.crf``: dense CRF, ConvCRF
- ``segcourse.export``       ONNX graphs with dynamic sizes, checked in onnxruntime (``deploy``)
- ``segcourse.fuse``         inference-time folds: BatchNorm into the preceding conv
- ``segcourse.profiling``    parameters, FLOPs, latency, same-budget comparisons, SAM's split
- ``segcourse.viz``          every figure of the chapters, one topic per file
- ``segcourse.widgets``      ipywidgets explorers over those figures
"""

__version__ = "0.1.0"
