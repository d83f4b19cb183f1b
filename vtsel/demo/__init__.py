"""``vtsel demo-data``: a small image set that needs no download, for demos and tests.

Three kinds of image, because a token selector behaves differently on each:

- ``photo-<source>-<name>-<i>.png``: photos shipped inside scikit-image, scikit-learn and
  matplotlib (``i = 0`` is the whole photo, ``i >= 1`` random crops of it);
- ``doc-<i>.png``: rendered pages of pseudo-text with headings, paragraphs, lists and tables;
- ``chart-<i>.png``: matplotlib bar, line and pie charts;
- ``page-<i>.png``: pages of real English prose (the standard library's docstrings).

Documents, pages and charts are dominated by small text that a selector must not drop, so each has a
sidecar ``<name>.regions.json``: ``{"width", "height", "boxes": [[x0, y0, x1, y1], ...]}`` with
one pixel box (x1, y1 exclusive) per drawn piece of text.
"""

from vtsel.demo.write import write_demo_images

__all__ = ["write_demo_images"]
