"""Datasets (FashionIQ, Shoes, Fashion200k), tokenisation, images and loaders.

Entry points: `data.formats.open_dataset(cfg)` (the format registry), `data.text.Vocabulary`,
`data.images.{load_image, prepared_pixels}` (and the per-image torchvision transforms, the reference the
batch-level `data.augment` is tested against), `data.cache.{PixelSource, open_pixel_source}` (the prepared
image cache that `python -m data.prepare` writes), `data.loaders.{TripletImages, ImageList, collate_triplets,
drop_missing}`.
Submodules are imported where used, so that reading annotations never imports torch.
"""
