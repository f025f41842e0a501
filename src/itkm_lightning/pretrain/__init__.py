"""`itkm pretrain`: the demo's own tiny CLIP, pretrained on a captioned synthetic corpus (docs/pretraining.md).

Modules: ``captions`` (coarse captions from rendered attributes), ``corpus`` (rendering and layout),
``datamodule`` (image-caption batches), ``module`` (the contrastive LightningModule), ``zero_shot``
(calibration on the synthetic benchmark), ``cli`` (the command).
"""
