"""Data: from the datasets where they lie to the prepared arrays a run trains on.

- ``registry``: every dataset (built-in, and the user's ``prepare.custom_datasets``) and the data root;
  ``readers``: images, masks and volumes read and checked, each bad file named; ``splits``: the committed
  train / val / test split of each dataset; ``prepare``: the ``prepare`` stage (resized, cropped, stored arrays
  and ``meta.json``); ``card``: dataset cards; ``overlay``: masks drawn over their images.
- ``loading``: prepared arrays as tensors for a run; ``augment``: the recipe's augmentation and patches.

May import ``repro.config`` and nothing else of the project: the training code and the runner import it.
"""
