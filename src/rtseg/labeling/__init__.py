"""Pseudo ground truth for portrait data (SINet's data-generation method, WACV 2020 Sec. 4.1).

* :mod:`.faces` - face detectors (MediaPipe, OpenCV Haar, scikit-image LBP) behind one protocol;
* :mod:`.teachers` - segmentation teachers (any rtseg model with weights, MediaPipe selfie);
* :mod:`.pipeline` - images/videos -> faces -> teachers -> consensus mask + confidence -> dataset;
* :mod:`.layout` - the folder the label tool writes and the review tool reads.

``rtseg label`` runs the pipeline; ``rtseg review`` (:mod:`rtseg.review`) lets a person accept,
reject or flip each pseudo mask.
"""
