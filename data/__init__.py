"""Datasets (FashionIQ, Shoes, Fashion200k), tokenisation, images and loaders.

Entry points: `data.formats.open_dataset(cfg)` (the format registry), `data.text.Vocabulary`,
`data.images.{load_image, train_transform, eval_transform}`,
`data.loaders.{TripletImages, ImageList, collate_triplets, drop_missing}`.
Submodules are imported where used, so that reading annotations never imports torch.
"""
