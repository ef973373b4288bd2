"""segcourse: tested reference implementations for a course on image segmentation in PyTorch.

The chapters of the book import from here. Sub-modules:

- ``segcourse.data``     synthetic shapes dataset, joint transforms, Oxford-IIIT Pet reader
- ``segcourse.models``   one file per model family and a registry (``build``, ``list_models``)
- ``segcourse.losses``   cross-entropy, Dice, Focal, Lovasz-Softmax, boundary loss
- ``segcourse.metrics``  confusion matrix, IoU / mIoU, pixel accuracy, panoptic quality
- ``segcourse.train``    ``fit`` / ``evaluate``, checkpoints, seeding, device choice
- ``segcourse.viz``      masks, overlays, prediction grids, curves
"""

__version__ = "0.1.0"
