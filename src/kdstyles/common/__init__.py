"""What every layer uses, and which imports no other part of kdstyles but ``errors``: 2D or 3D
(``dims``), what a network takes (``inputs``), every metric (``metrics``), detection's boxes
(``boxes``), progress bars (``progress``), graceful stops (``signals``), torchrun helpers
(``distributed``) and MONAI's first import without transformers' BERT (``monai_import``)."""
