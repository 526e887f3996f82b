"""``rtseg review``: a local web page to accept, reject or flip each pseudo mask of a dataset
made by ``rtseg label``. The server is :mod:`rtseg.review.server`; the page is ``static/``."""
