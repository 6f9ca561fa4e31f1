"""Datasets (FashionIQ, Shoes, Fashion200k), tokenisation, images and loaders.

Entry points: `data.base.open_dataset(cfg)`, `data.text.Vocabulary`,
`data.images.{load_image, train_transform, eval_transform}`,
`data.loaders.{TripletImages, ImageFolderList, collate_triplets, drop_missing}`.
Submodules are imported where used, so that reading annotations never imports torch.
"""
