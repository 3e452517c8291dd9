"""One converter per input format into the shared schema (``sam_hf.data.schema``): MinneApple
(:mod:`~sam_hf.data.sources.minneapple`, download in ``minneapple_download``), per-image JSON
polygons (``jsonpoly``), COCO with ``noun_phrase`` (``coco``; writing COCO-text in
``coco_export``) and SA-Co (``saco``)."""
