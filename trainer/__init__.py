"""MAE pretraining: the model (``model.py``), the DeepSpeed loop (``pretrain.py``, ``engine.py``),
checkpoints (``checkpoint.py``), weights in and out (``weights.py``, ``export.py``) and
reconstructions (``recon.py``, ``visualize.py``). Evaluation lives in ``finetune/``, which imports
this package, never the reverse."""
